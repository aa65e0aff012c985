"""PPO's critic: a scalar value head on the policy's backbone, stored at params["value_head"].

    params = add_value_head(params, rng, hidden_size)   # {"kernel": (D, 1)} ~ N(0, 0.02^2)
    values = head_values(params, hidden)                 # [B, T] fp32
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


def add_value_head(params: Any, rng: jax.Array, dim: int) -> Any:
    """params with a fresh value head that trains whatever the PEFT method."""
    from jaxtune import peft
    from jaxtune.peft.weight import AdapterLeaf

    head = init_value_head(rng, dim)
    is_leaf = lambda x: isinstance(x, AdapterLeaf)
    has_adapters = any(is_leaf(x) for x in jax.tree.leaves(params, is_leaf=is_leaf))
    if isinstance(params, peft.FreezeParams):
        return peft.FreezeParams({**params, KEY: head}, (*params.spec, (f"{KEY}/kernel", True)))
    if has_adapters:
        return peft.FreezeParams({**params, KEY: head}, ((f"{KEY}/kernel", True),))
    return {**params, KEY: head}


def drop_value_head(params: Any) -> Any:
    """params without the value head (a freeze-tuning record kept, minus the head's entry)."""
    from jaxtune import peft

    rest = {k: v for k, v in params.items() if k != KEY}
    if isinstance(params, peft.FreezeParams):
        spec = tuple((p, m) for p, m in params.spec if not p.startswith(KEY + "/"))
        return peft.FreezeParams(rest, spec) if spec else rest
    return rest


def head_values(params: Any, hidden: jax.Array) -> jax.Array:
    """Values [B, T] fp32 of hidden states [B, T, D]."""
    return value_head(params[KEY], hidden)
