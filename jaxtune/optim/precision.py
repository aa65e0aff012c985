"""Mixed precision of the params and of the optimizer.

    mode        params     compute (model.compute_dtype)   optimizer state and math
    none        as loaded  as loaded                       fp32 state, fp32 math
    bf16        fp32       bf16                            fp32 state, fp32 math
    pure_bf16   bf16       bf16                            bf16 state, fp32 math

`bf16` is the usual mixed precision: fp32 master weights in the train state, and a model built
with `compute_dtype=jnp.bfloat16`, whose `linear` casts each weight to bf16 inside the matmul,
so activations are bf16 and gradients come back in fp32. `pure_bf16` is LlamaFactory's: the
params themselves are bf16 (half the memory, no master copy) and so is the optimizer state; each
update is still computed in fp32 (upcast, update, round back), which torch's pure-bf16 AdamW
does not do. A train loop loads the model with `model_dtypes(mode)` (param dtype, compute
dtype); `build` stores and computes the optimizer state as the mode says.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtune.optim.config import PRECISIONS
from jaxtune.optim.errors import OptimError


def _check(mode: str) -> None:
    if mode not in PRECISIONS:
        raise OptimError(
            f"optim.mixed_precision={mode!r} is not known; choose one of {', '.join(PRECISIONS)}."
        )


def model_dtypes(mode: str) -> tuple[Any | None, Any | None]:
    """(param dtype, compute dtype) for `models.load`; None = keep what the run chose."""
    _check(mode)
    return {
        "none": (None, None),
        "bf16": (jnp.float32, jnp.bfloat16),
        "pure_bf16": (jnp.bfloat16, jnp.bfloat16),
    }[mode]


def state_dtype(mode: str) -> Any:
    """Storage dtype of the optimizer's float state."""
    _check(mode)
    return jnp.bfloat16 if mode == "pure_bf16" else jnp.float32


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def cast_params(params: Any, mode: str) -> Any:
    """Float params in the mode's param dtype (unchanged for `none`)."""
    dtype, _ = model_dtypes(mode)
    return params if dtype is None else _cast_floats(params, dtype)


def fp32_math(
    inner: optax.GradientTransformation, storage: Any = jnp.float32
) -> optax.GradientTransformation:
    """`inner` computed in fp32 on fp32 copies of grads, params and state; the state is stored
    in `storage` and each update is returned in its gradient's dtype."""

    def init(params: Any) -> Any:
        return _cast_floats(inner.init(_cast_floats(params, jnp.float32)), storage)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        p32 = None if params is None else _cast_floats(params, jnp.float32)
        out, state = inner.update(
            _cast_floats(updates, jnp.float32), _cast_floats(state, jnp.float32), p32
        )
        out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
        return out, _cast_floats(state, storage)

    return optax.GradientTransformation(init, update)
