"""DoRA (Liu et al. 2024): LoRA with a learned magnitude per output feature, as PEFT does it.

    W' = m * (W + s BA) / ||W + s BA||_col        m [..., out] trainable, init ||W||_col

The column norm is treated as a constant (detached from the gradient), as the paper (section 4.3)
and PEFT do; `detach_norm=False` lets the gradient through it (the paper's exact form).

The forward never forms `W + s BA`: with a plain base the norm is expanded as

    ||W_j + s (AB)_j||^2 = ||W_j||^2 + 2 s <A^T W, B>_j + s^2 B_j^T (A^T A) B_j

which needs only [r, out] and [r, r] products, then `y = g * (x W + s (x A) B)` with g = m / n,
PEFT's `(g - 1) * base + g * lora` added to the base output (the same formula with dropout).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxtune.models.layers import linear
from jaxtune.peft.lora import check_rank, check_unadapted, init_low_rank, leaf_rngs, scaling
from jaxtune.peft.select import Targets, map_selected, select
from jaxtune.peft.weight import (
    AdapterLeaf,
    dense_shape,
    dropout,
    frozen,
    low_rank,
    materialize,
)


@struct.dataclass
class DoraWeight(AdapterLeaf):
    """A frozen `base`, LoRA factors `lora_a` [..., in, r], `lora_b` [..., r, out] and the
    `magnitude` [..., out] of each output feature's column."""

    base: Any
    lora_a: jax.Array
    lora_b: jax.Array
    magnitude: jax.Array
    dropout_rng: jax.Array | None = None
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout: float = struct.field(pytree_node=False, default=0.0)
    detach_norm: bool = struct.field(pytree_node=False, default=True)

    trainable_fields = {  # noqa: RUF012
        "lora_a": "lora_a",
        "lora_b": "lora_b",
        "magnitude": "dora_magnitude",
    }

    @property
    def rank(self) -> int:
        return self.lora_a.shape[-1]

    def linear(self, x: jax.Array) -> jax.Array:
        base = frozen(self.base)
        y = linear(x, base)
        h = dropout(x, self.dropout, self.dropout_rng)
        base_h = y if h is x else linear(h, base)
        w = materialize(base)  # a plain base stays as is; a quantized one is dequantized
        norm = column_norm(w, self.lora_a, self.lora_b, self.scale)
        if self.detach_norm:
            norm = jax.lax.stop_gradient(norm)
        g = (self.magnitude.astype(jnp.float32) / norm).astype(x.dtype)  # [out]
        low = low_rank(h, self.lora_a, self.lora_b)
        return y + (g - 1) * base_h + g * (self.scale * low).astype(y.dtype)

    def materialize(self) -> jax.Array:
        w = materialize(self.base)
        a, b = self.lora_a.astype(jnp.float32), self.lora_b.astype(jnp.float32)
        adapted = w.astype(jnp.float32) + self.scale * jnp.matmul(a, b)
        norm = jnp.linalg.norm(adapted, axis=-2)  # [..., out]
        g = self.magnitude.astype(jnp.float32) / norm
        return (adapted * g[..., None, :]).astype(w.dtype)


def column_norm(w: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """||W + scale A B|| per output column [..., out] in fp32, without forming A B."""
    f32 = jnp.float32
    w2 = jnp.sum(jnp.square(w.astype(f32)), axis=-2)  # [..., out]
    aw = jnp.einsum("...ir,...io->...ro", a.astype(w.dtype), w, preferred_element_type=f32)
    a32, b32 = a.astype(f32), b.astype(f32)
    cross = jnp.sum(b32 * aw, axis=-2)  # <(AB)_j, W_j>
    gram = jnp.einsum("...ir,...is->...rs", a32, a32)  # [..., r, r]
    ab2 = jnp.sum(b32 * jnp.einsum("...rs,...so->...ro", gram, b32), axis=-2)  # ||(AB)_j||^2
    return jnp.sqrt(jnp.maximum(w2 + 2.0 * scale * cross + scale * scale * ab2, 0.0))


def dora(
    params: Any,
    targets: Targets,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    rslora: bool = False,
    detach_norm: bool = True,
    rng: jax.Array,
    dtype: Any = jnp.float32,
) -> Any:
    """Wrap every kernel selected by `targets` in a `DoraWeight` (B zero and m = ||W||_col: the
    model is unchanged at step 0)."""
    paths = select(params, targets)
    keys = leaf_rngs(rng, paths)
    scale = scaling(alpha, rank, rslora)

    def wrap(path: str, w: Any) -> DoraWeight:
        check_unadapted(path, w)
        shape = dense_shape(w)
        check_rank(path, shape, rank)
        a, b = init_low_rank(keys[path], shape, rank, dtype)
        magnitude = jnp.linalg.norm(materialize(w).astype(jnp.float32), axis=-2).astype(dtype)
        return DoraWeight(
            base=w,
            lora_a=a,
            lora_b=b,
            magnitude=magnitude,
            scale=scale,
            dropout=float(dropout),
            detach_norm=detach_norm,
        )

    return map_selected(params, paths, wrap)
