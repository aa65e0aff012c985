"""Symmetric int8 absmax quantization, per block along `in` or per output channel.

w [..., in, out] -> codes int8 [..., in, out] = round(127 * w / absmax), absmax f32
[..., in/B, out] (B = in for per-channel: one scale per output feature). Dequantized:
codes * absmax / 127, so |w - dequantized| <= absmax / 254 (plus float32 rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.quant.blockwise import absmax_of, blocks_of

LEVELS = 127.0


def quantize_int8(w: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    """w [..., in, out] -> (codes int8 [..., in, out], absmax f32 [..., in/B, out])."""
    blocks = blocks_of(w.astype(jnp.float32), block_size)
    absmax = absmax_of(blocks)
    safe = jnp.where(absmax > 0, absmax, 1.0)
    scaled = blocks * jnp.where(absmax > 0, LEVELS / safe, 0.0)[..., None, :]
    codes = jnp.clip(jnp.round(scaled), -LEVELS, LEVELS).astype(jnp.int8)
    return codes.reshape(w.shape), absmax


def dequantize_int8(
    codes: jax.Array, absmax: jax.Array, block_size: int, dtype=jnp.float32
) -> jax.Array:
    """(codes [..., in, out], absmax [..., in/B, out]) -> w [..., in, out] in `dtype`."""
    blocks = blocks_of(codes.astype(jnp.float32), block_size)
    w = blocks * (absmax / LEVELS)[..., None, :]
    return w.reshape(codes.shape).astype(dtype)
