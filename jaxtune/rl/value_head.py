"""PPO's critic: a scalar value head at params["value_head"], on the policy's backbone (shared)
or on a separate copy of it at params["critic"] (`separate=True`: its own weights, or its own
adapters over the same base with PEFT, trained by the value loss only).

    params = add_value_head(params, rng, hidden_size)   # {"kernel": (D, 1)} ~ N(0, 0.02^2)
    values = head_values(params, hidden)                 # [B, T] fp32
    backbone = critic_params(params)                     # params["critic"], or params itself
    params = drop_value_head(params)                     # what `jaxtune export` writes

With PEFT the plain arrays of the tree are frozen (PEFT's rule); the head is then recorded as a
trainable array in a `peft.FreezeParams` root (the record `peft.param_labels` reads), so it trains
beside the adapters. Full fine-tuning trains every array anyway.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxtune.losses.reward import init_value_head, value_head

KEY = "value_head"
CRITIC = "critic"


def add_value_head(params: Any, rng: jax.Array, dim: int, *, separate: bool = False) -> Any:
    """params with a fresh value head (and a separate critic backbone) that train whatever the
    PEFT method."""
    import jax.numpy as jnp

    from jaxtune import peft
    from jaxtune.peft.weight import AdapterLeaf

    head = init_value_head(rng, dim)
    is_leaf = lambda x: isinstance(x, AdapterLeaf)
    has_adapters = any(is_leaf(x) for x in jax.tree.leaves(params, is_leaf=is_leaf))
    spec = tuple(params.spec) if isinstance(params, peft.FreezeParams) else ()
    extra = {KEY: head}
    if separate:  # new buffers: the train step donates each trainable array once
        extra[CRITIC] = jax.tree.map(jnp.copy, dict(params))
        spec = (*spec, *((f"{CRITIC}/{p}", m) for p, m in spec))
    if isinstance(params, peft.FreezeParams) or has_adapters:
        return peft.FreezeParams({**params, **extra}, (*spec, (f"{KEY}/kernel", True)))
    return {**params, **extra}


def drop_value_head(params: Any) -> Any:
    """params without the value head and critic (a freeze-tuning record kept, minus theirs)."""
    from jaxtune import peft

    mine = (KEY, CRITIC)
    rest = {k: v for k, v in params.items() if k not in mine}
    if isinstance(params, peft.FreezeParams):
        spec = tuple((p, m) for p, m in params.spec if p.split("/", 1)[0] not in mine)
        return peft.FreezeParams(rest, spec) if spec else rest
    return rest


def critic_params(params: Any) -> Any:
    """The backbone the values are computed on: the separate critic's, or the policy's."""
    return params.get(CRITIC, params)


def head_values(params: Any, hidden: jax.Array) -> jax.Array:
    """Values [B, T] fp32 of hidden states [B, T, D]."""
    return value_head(params[KEY], hidden)
