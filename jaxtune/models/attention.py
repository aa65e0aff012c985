"""Masks and scaled dot-product attention with grouped KV heads.

One mask rule serves training, packed rows and KV-cache decoding. Every token has a slot (its
index in the row or in the cache); a query attends to a key when
  key slot <= query slot            (causal)
  and the key is valid              (not padding, already written to the cache)
  and both share a segment id       (packed documents never see each other)
  and query slot - key slot < window  (sliding-window layers only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.models.layers import softcap

NEG_INF = -1e30  # finite, so a fully masked (padding) query row gives uniform weights, not NaN


def causal_mask(
    q_slots: jax.Array,  # (B, T) int
    k_slots: jax.Array,  # (S,) int
    k_valid: jax.Array,  # (B, S) bool
    q_segments: jax.Array | None = None,  # (B, T) int
    k_segments: jax.Array | None = None,  # (B, S) int
    window: int | None = None,
) -> jax.Array:
    """Boolean mask (B, T, S): True where a query may attend to a key."""
    q = q_slots[:, :, None]
    k = k_slots[None, None, :]
    mask = (k <= q) & k_valid[:, None, :]
    if q_segments is not None and k_segments is not None:
        mask &= q_segments[:, :, None] == k_segments[:, None, :]
    if window is not None:
        mask &= (q - k) < window
    return mask


def attention(
    q: jax.Array,  # (B, T, H, D)
    k: jax.Array,  # (B, S, K, D)
    v: jax.Array,  # (B, S, K, D)
    mask: jax.Array,  # (B, T, S) bool
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Reference attention: fp32 softmax, output (B, T, H, D) in q's dtype."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)  # (B, T, K, G, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(scale, q.dtype)
    logits = softcap(logits.astype(jnp.float32), logit_softcap)
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v)
    return out.reshape(b, t, h, d)


# name -> function(q, k, v, mask, scale, logit_softcap) -> out; other kernels register here.
ATTENTION_IMPLS = {"reference": attention}
