"""What every adapter leaf shares: a frozen `base` weight of any kind, and helpers over it.

A base is a plain array `[..., in, out]` or any weight leaf with `linear(x)` and `materialize()`
(e.g. an int4 kernel from `jaxtune.quant`): adapters only ever call `base_linear` and
`materialize`, never assume an array, so QLoRA is a LoRA leaf over a quantized leaf.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxtune.models.layers import linear


class AdapterLeaf:
    """Mixin of LoRA/DoRA/Houlsby leaves: a frozen `base` plus trainable array fields.

    `trainable_fields` maps each trainable field to its optimizer label; every other array in the
    leaf (the base's arrays, a dropout key) is frozen.
    """

    trainable_fields: ClassVar[dict[str, str]] = {}
    base: Any

    def materialize(self) -> jax.Array:  # pragma: no cover - overridden
        raise NotImplementedError


def frozen(base: Any) -> Any:
    """The base with its gradient stopped (all its arrays)."""
    return jax.tree.map(jax.lax.stop_gradient, base)


def base_linear(x: jax.Array, base: Any) -> jax.Array:
    """x @ base, through the base's own matmul when it is a weight leaf; no gradient to it."""
    return linear(x, frozen(base))


def materialize(w: Any) -> jax.Array:
    """The dense `[..., in, out]` array of any weight (a plain array is returned as is)."""
    return w.materialize() if hasattr(type(w), "materialize") else w


def dense_shape(w: Any) -> tuple[int, ...]:
    """Shape of the dense weight without computing it."""
    if not hasattr(type(w), "materialize"):
        return tuple(w.shape)
    return tuple(jax.eval_shape(w.materialize).shape)


def low_rank(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """(x @ a) @ b for x [..., in], a [in, r], b [r, out], in x's dtype.

    The token axes are flattened first: the weight gradients then contract one axis, which
    XLA:CPU runs 2x faster than the same contraction over (batch, time)."""
    x2 = x.reshape(-1, x.shape[-1])
    y = jnp.dot(jnp.dot(x2, a.astype(x.dtype)), b.astype(x.dtype))
    return y.reshape(*x.shape[:-1], b.shape[-1])


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout of `x`; the identity when `rng` is None (evaluation) or `rate` is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def kaiming_uniform(rng: jax.Array, shape: tuple[int, ...], fan_in: int, dtype: Any) -> jax.Array:
    """torch's `kaiming_uniform_(a=sqrt(5))`, PEFT's init of lora_A: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / (fan_in**0.5)
    return jax.random.uniform(rng, shape, jnp.float32, -bound, bound).astype(dtype)
