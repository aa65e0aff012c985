"""Rotary position embeddings with the scaling types of transformers' `rope_parameters`."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxtune.errors import CheckpointError
from jaxtune.models.config import RopeConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def rotary_dim(rope: RopeConfig, head_dim: int) -> int:
    return int(head_dim * rope.partial_rotary_factor)


def inverse_frequencies(rope: RopeConfig, head_dim: int, seq_len: jnp.ndarray | None = None):
    """Inverse frequencies [rotary_dim // 2], as transformers computes them per rope type.

    `seq_len` (max position + 1 of the call) matters only for `dynamic` NTK scaling.
    """
    dim = rotary_dim(rope, head_dim)
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    base = jnp.float32(rope.theta)
    if rope.kind == "dynamic" and seq_len is not None:
        orig = rope.original_max_position
        seq = jnp.maximum(seq_len.astype(jnp.float32), orig)
        base = base * ((rope.factor * seq / orig) - (rope.factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponents)
    if rope.kind == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.kind == "llama3":
        inv_freq = _llama3_scale(inv_freq, rope)
    elif rope.kind not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(
            f"rope type {rope.kind!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return inv_freq


def _llama3_scale(inv_freq: jnp.ndarray, rope: RopeConfig) -> jnp.ndarray:
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def cos_sin(rope: RopeConfig, head_dim: int, positions: jnp.ndarray):
    """cos and sin tables [B, T, rotary_dim] for integer positions [B, T] (fp32)."""
    seq_len = jnp.max(positions) + 1 if rope.kind == "dynamic" else None
    inv_freq = inverse_frequencies(rope, head_dim, seq_len)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, dim/2)
    angles = jnp.concatenate([angles, angles], axis=-1)  # (B, T, dim)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [B, T, H, D] by the tables [B, T, R] (R <= D; the rest passes through)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    out = x_rot * cos + rotated * sin
    return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
