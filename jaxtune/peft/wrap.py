"""The universal path: adapted params for a model whose code does not call
`jaxtune.models.layers.linear` (a user's own linen or NNX module).

    apply = peft.wrap(model.apply)                       # linen
    logits = apply(adapted_variables, x)

    graphdef, state = nnx.split(module)                  # NNX: adapt the state pytree
    state = peft.lora(state, ["linear1"], rank=4, rng=key)
    apply = peft.wrap(lambda s, x: nnx.merge(graphdef, s)(x))

Inside the function every weight leaf is materialised into a plain array (`W + sAB` for LoRA),
with the gradient stopped on frozen arrays, then the original function runs. This costs one dense
weight per adapted kernel per call; jaxtune's own models use the fast path instead. LoRA dropout
(an input dropout) does not apply here, and Houlsby adapters (nonlinear) cannot be materialised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxtune.peft.freeze import plain
from jaxtune.peft.select import is_weight_leaf
from jaxtune.peft.tree import stop_frozen


def materialize_params(params: Any) -> Any:
    """Every weight leaf replaced by its dense array, gradients stopped where frozen."""
    return jax.tree.map(
        lambda x: x.materialize() if is_weight_leaf(x) else x,
        plain(stop_frozen(params)),
        is_leaf=is_weight_leaf,
    )


def wrap(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
    """`apply_fn(params, *args, **kwargs)` made to accept adapted params (first argument)."""

    @functools.wraps(apply_fn)
    def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
        return apply_fn(materialize_params(params), *args, **kwargs)

    return wrapped
