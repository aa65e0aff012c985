"""S2 attention: LongLoRA's shifted sparse attention (Chen et al. 2023), for long-context training.

The sequence of length T is cut into groups of G = T/4 tokens and attention stays inside a group.
Half of the heads use groups shifted by G/2, so information flows between neighbouring groups:

    head h < H/2:   query i may see key j  iff  mask[i, j] and  i // G == j // G
    head h >= H/2:  query i may see key j  iff  mask[i, j] and  (i + G/2) // G == (j + G/2) // G

where `mask` is the usual causal/padding/segment/window mask. Each group costs G^2, so a layer
costs T^2/4 instead of T^2. The shifted groups do not wrap around: LongLoRA's reference code rolls
the sequence, which puts the first G/2 tokens into the last group where they see the end of the
sequence (a leak); here that group is split in two (the mask `group(i) == group(j)` is applied
in original positions), so no token ever sees a later one.

Only training uses it: at inference (a KV cache, queries != keys) and wherever the definition does
not apply (T not a multiple of 8, an odd number of heads) this is full attention, as in LongLoRA.
Select it with `CausalLM(attention_impl="s2")` for the training model and keep "reference" (or
"fused") for evaluation and generation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.models import attention as attn_lib

GROUPS = 4  # LongLoRA's group_size_ratio = 1/4


def s2_applies(q: jax.Array, k: jax.Array) -> bool:
    """S2 needs queries == keys, T divisible by 2 * GROUPS, and an even number of heads."""
    t, h = q.shape[1], q.shape[2]
    return t == k.shape[1] and t % (2 * GROUPS) == 0 and h % 2 == 0 and t >= 2 * GROUPS


def s2_attention(
    q: jax.Array,  # (B, T, H, D)
    k: jax.Array,  # (B, T, K, D)
    v: jax.Array,  # (B, T, K, D)
    mask: attn_lib.Mask,  # (B, T, T) bool or AttentionMask
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Shifted sparse attention (module doc); full reference attention where it does not apply."""
    if not s2_applies(q, k):
        return attn_lib.attention(q, k, v, mask, scale, logit_softcap)
    dense = attn_lib.as_dense(mask)
    t, h = q.shape[1:3]
    n_kv = k.shape[2]
    if (h // 2) % (h // n_kv) != 0:  # the head split would cut a KV group: give each head its KV
        k, v = (jnp.repeat(x, h // n_kv, axis=2) for x in (k, v))
        n_kv = h
    group = t // GROUPS
    shift = group // 2
    slots = jnp.arange(t)
    plain = _grouped(
        q[:, :, : h // 2],
        k[:, :, : n_kv // 2],
        v[:, :, : n_kv // 2],
        dense,
        slots,
        slots // group,
        group,
        scale,
        logit_softcap,
    )
    rolled = jnp.roll(slots, -shift)  # position p holds token p + G/2 (mod T)
    shifted = _grouped(
        jnp.roll(q[:, :, h // 2 :], -shift, axis=1),
        jnp.roll(k[:, :, n_kv // 2 :], -shift, axis=1),
        jnp.roll(v[:, :, n_kv // 2 :], -shift, axis=1),
        dense,
        rolled,
        (rolled + shift) // group,
        group,
        scale,
        logit_softcap,
    )
    shifted = jnp.roll(shifted, shift, axis=1)
    return jnp.concatenate([plain, shifted], axis=2)


def _grouped(q, k, v, dense, slots, group_ids, group, scale, logit_softcap):
    """Attention inside consecutive blocks of `group` positions; `slots` (T,) are the original
    token indices at each position, `group_ids` (T,) the group each token belongs to."""
    b, t, h, d = q.shape
    n = t // group
    idx = slots.reshape(n, group)  # (n, G)
    gid = group_ids.reshape(n, group)
    block_mask = dense[:, idx[:, :, None], idx[:, None, :]]  # (B, n, G, G)
    block_mask &= (gid[:, :, None] == gid[:, None, :])[None]

    def blocks(x):  # (B, T, X, D) -> (B * n, G, X, D)
        return x.reshape(b * n, group, x.shape[2], d)

    out = attn_lib.attention(
        blocks(q),
        blocks(k),
        blocks(v),
        block_mask.reshape(b * n, group, group),
        scale,
        logit_softcap,
    )
    return out.reshape(b, t, h, d)
