"""The shared building blocks of every jaxtune decoder.

`linear` is the one call site of every weight matmul. A weight leaf is either a plain array
`[in, out]` or an object with a `linear(x)` method (a LoRA/DoRA leaf, a quantized leaf, or both
nested). Models never import PEFT or quantization code: new kinds of weight plug in here.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp


@runtime_checkable
class LinearLeaf(Protocol):
    """A weight leaf that carries its own matmul: `x [..., in] -> [..., out]`."""

    def linear(self, x: jax.Array) -> jax.Array: ...


def linear(x: jax.Array, w: Any, bias: jax.Array | None = None) -> jax.Array:
    """x [..., in] @ w [in, out] (+ bias), computed in x's dtype."""
    y = w.linear(x) if isinstance(w, LinearLeaf) else jnp.dot(x, w.astype(x.dtype))
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, plus_one: bool = False) -> jax.Array:
    """RMSNorm in fp32. Llama scales after casting back; Gemma scales by (1 + w) in fp32."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:
        return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm in fp32, cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap) (Gemma 2), or x when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)
