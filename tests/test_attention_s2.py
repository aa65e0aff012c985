"""S2 attention (LongLoRA's shifted sparse attention) equals a direct implementation of its
definition: per head, the usual mask AND "same group", with groups of T/4 tokens, shifted by
half a group for the second half of the heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.models.attention import ATTENTION_IMPLS, attention, causal_mask
from jaxtune.models.s2_attention import s2_attention

ATOL = 1e-5


def s2_by_definition(q, k, v, mask, scale, cap=None):
    """Head by head: full attention under mask & same-group (plain or shifted groups)."""
    t, h = q.shape[1:3]
    group = t // 4
    i = np.arange(t)
    plain, shifted = i // group, (i + group // 2) // group
    rep = h // k.shape[2]
    outs = []
    for head in range(h):
        gid = plain if head < h // 2 else shifted
        m = mask & jnp.asarray(gid[:, None] == gid[None, :])[None]
        kv = head // rep
        outs.append(
            attention(
                q[:, :, head : head + 1],
                k[:, :, kv : kv + 1],
                v[:, :, kv : kv + 1],
                m,
                scale,
                cap,
            )
        )
    return jnp.concatenate(outs, axis=2)


def packed_inputs(t=32, h=4, n_kv=2, d=8, window=None, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, n, d)), jnp.float32) for n in (h, n_kv, n_kv))
    seg = np.ones((2, t), np.int32)
    seg[0, 11:] = 2
    seg[1, 20:] = 2
    seg[1, t - 3 :] = 0  # padding
    seg = jnp.asarray(seg)
    slots = jnp.broadcast_to(jnp.arange(t), (2, t))
    mask = causal_mask(slots, jnp.arange(t), seg > 0, seg, seg, window=window)
    return q, k, v, mask, np.asarray(seg > 0)


@pytest.mark.parametrize(
    "h,n_kv,window,cap",
    [(4, 4, None, None), (4, 2, None, None), (4, 1, 6, None), (6, 2, None, 5.0)],
)
def test_s2_equals_its_definition(h, n_kv, window, cap):
    q, k, v, mask, valid = packed_inputs(h=h, n_kv=n_kv, window=window)
    got = jax.jit(s2_attention, static_argnums=(4, 5))(q, k, v, mask, 0.3, cap)
    want = jax.jit(s2_by_definition, static_argnums=(4, 5))(q, k, v, mask, 0.3, cap)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=ATOL)


def test_s2_is_sparse_and_never_sees_the_future():
    """Output i depends on key j only when j <= i and (i, j) share a group of some head half."""
    t = 32
    q, k, v, _, _ = packed_inputs(t=t)
    mask = causal_mask(
        jnp.broadcast_to(jnp.arange(t), (2, t)), jnp.arange(t), jnp.ones((2, t), bool)
    )

    # d out[0, i] / d k, for every i at once: the Jacobian's (query, key) support
    jac = jax.jit(jax.jacrev(lambda kk: s2_attention(q, kk, v, mask, 0.3)[0].sum(axis=(1, 2))))(k)
    support = np.abs(np.asarray(jac)[:, 0]).sum(axis=(2, 3)) > 0  # (T queries, T keys)
    for i in (3, 5, 31):  # 5 is past the first shifted boundary (G/2 = 4); 31 ends the row
        seen = set(np.nonzero(support[i])[0])
        assert max(seen) <= i
        plain = {j for j in range(i + 1) if j // 8 == i // 8}
        shifted = {j for j in range(i + 1) if (j + 4) // 8 == (i + 4) // 8}
        assert seen == plain | shifted, (i, sorted(seen))


def test_s2_at_inference_is_full_attention():
    """With a cache (queries != keys) or a length S2 does not cut, it is the reference."""
    q, k, v, mask, _ = packed_inputs()
    q1, mask1 = q[:, -1:], mask[:, -1:]
    np.testing.assert_allclose(
        s2_attention(q1, k, v, mask1, 0.3), attention(q1, k, v, mask1, 0.3), atol=ATOL
    )
    q6, k6, v6, m6 = q[:, :6], k[:, :6], v[:, :6], mask[:, :6, :6]
    np.testing.assert_allclose(
        ATTENTION_IMPLS["s2"](q6, k6, v6, m6, 0.3, None), attention(q6, k6, v6, m6, 0.3)
    )
