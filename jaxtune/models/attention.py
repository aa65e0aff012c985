"""Masks and scaled dot-product attention with grouped KV heads, and the fused kernels.

One mask rule serves training, packed rows and KV-cache decoding. Every token has a slot (its
index in the row or in the cache); a query attends to a key when
  key slot <= query slot            (causal)
  and the key is valid              (not padding, already written to the cache)
  and both share a segment id       (packed documents never see each other)
  and query slot - key slot < window  (sliding-window layers only).

The mask reaches an implementation either dense, a bool array (B, T, S), or as an
`AttentionMask` (the slots, validity, segment ids and window it is made of), which lets a kernel
skip the dense array (splash needs segment ids). Implementations, `ATTENTION_IMPLS[name](q, k, v,
mask, scale, logit_softcap)`, agree on every query that has a valid key (padding rows are
don't-care):

    reference  einsum + fp32 softmax; the exact path, every feature
    xla        jax.nn.dot_product_attention(implementation="xla")
    cudnn      jax.nn.dot_product_attention(implementation="cudnn"): cuDNN flash attention (GPU;
               bf16/fp16, head_dim <= 128 and a multiple of 8)
    splash     the Pallas splash-attention kernel (TPU; needs an AttentionMask without a cache,
               a length that is a multiple of 128); segment ids, sliding windows and
               soft-capping run inside the kernel
    fused      the best of the above for the backend: cudnn on GPU, splash on TPU, xla elsewhere
    s2         LongLoRA's shifted sparse attention for training (see s2_attention.py)

A kernel that cannot take a call (a soft-cap in xla/cudnn, a dtype or shape it does not support)
routes it to `xla` or `reference`, so every name works everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jaxtune.models.layers import softcap

NEG_INF = -1e30  # finite, so a fully masked (padding) query row gives uniform weights, not NaN
Mask = Any  # jax.Array (B, T, S) bool | AttentionMask
AttentionFn = Callable[..., jax.Array]


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """The parts of the mask rule, for kernels that should not see a dense (B, T, S) array.

    `window` is static; `sliding` (a traced bool scalar, e.g. a scanned per-layer flag) says
    whether this layer uses it (None: it does whenever `window` is set). `aligned` (static) is
    True when queries and keys are the same tokens (training, a prefill without a cache).
    """

    q_slots: jax.Array  # (B, T) int
    k_slots: jax.Array  # (S,) int
    k_valid: jax.Array  # (B, S) bool
    q_segments: jax.Array | None = None  # (B, T) int
    k_segments: jax.Array | None = None  # (B, S) int
    sliding: jax.Array | None = None  # () bool
    window: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    aligned: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def dense(self) -> jax.Array:
        """The (B, T, S) bool mask, equal to `causal_mask` of the same parts."""
        full = causal_mask(
            self.q_slots, self.k_slots, self.k_valid, self.q_segments, self.k_segments
        )
        if self.window is None:
            return full
        windowed = full & ((self.q_slots[:, :, None] - self.k_slots[None, None, :]) < self.window)
        return windowed if self.sliding is None else jnp.where(self.sliding, windowed, full)

    def replace(self, **changes: Any) -> AttentionMask:
        return dataclasses.replace(self, **changes)


def as_dense(mask: Mask) -> jax.Array:
    """A dense (B, T, S) bool mask from either form."""
    return mask.dense() if isinstance(mask, AttentionMask) else mask


# ----------------------------------------------------------------------------- reference
def attention(
    q: jax.Array,  # (B, T, H, D)
    k: jax.Array,  # (B, S, K, D)
    v: jax.Array,  # (B, S, K, D)
    mask: Mask,  # (B, T, S) bool or AttentionMask
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Reference attention: fp32 softmax, output (B, T, H, D) in q's dtype."""
    mask = as_dense(mask)
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)  # (B, T, K, G, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(scale, q.dtype)
    logits = softcap(logits.astype(jnp.float32), logit_softcap)
    logits = jnp.where(mask[:, None, None, :, :], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v)
    return out.reshape(b, t, h, d)


def cached_attention(
    impl: str,
    q: jax.Array,  # (B, T, H, D)
    k: jax.Array,  # (B, K, S, D) head-major, as the KV cache stores it
    v: jax.Array,  # (B, K, S, D)
    mask: Mask,  # (B, T, S)
    scale: float,
    logit_softcap: float | None = None,
) -> jax.Array:
    """Attention of T new queries over a head-major KV cache, output (B, T, H, D).

    The reference computes in the cache's layout (a decode step transposes only its query);
    other implementations get the (B, S, K, D) layout they take.
    """
    if impl == "auto":
        impl = backend_impl()
    if impl != "reference":
        fn = ATTENTION_IMPLS[impl]
        return fn(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, scale, logit_softcap)
    mask = as_dense(mask)
    b, t, h, d = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)  # (B, K, G, T, D)
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k) * jnp.asarray(scale, q.dtype)
    logits = softcap(logits.astype(jnp.float32), logit_softcap)
    logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", weights, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


# ----------------------------------------------------------------------------- jax.nn (XLA, cuDNN)
def xla_attention(q, k, v, mask: Mask, scale: float, logit_softcap: float | None = None):
    """`jax.nn.dot_product_attention` on XLA (soft-capped calls go to the reference)."""
    if logit_softcap is not None:
        return attention(q, k, v, mask, scale, logit_softcap)
    dense = as_dense(mask)[:, None]  # (B, 1, T, S)
    return jax.nn.dot_product_attention(
        q, k, v, mask=dense, scale=scale, implementation="xla"
    ).astype(q.dtype)


def cudnn_supports(q: jax.Array, logit_softcap: float | None) -> bool:
    """Whether cuDNN flash attention takes this call (GPU, half precision, head_dim, no cap)."""
    d = q.shape[-1]
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and d <= 128
        and d % 8 == 0
        and logit_softcap is None
    )


def cudnn_attention(q, k, v, mask: Mask, scale: float, logit_softcap: float | None = None):
    """cuDNN flash attention; the mask goes in as a bias, and blocks above the diagonal are
    skipped when queries and keys are the same tokens (an aligned AttentionMask, or a square
    dense mask: every square mask the decoder builds is causal). Calls cuDNN cannot take run on
    `xla_attention`."""
    if not cudnn_supports(q, logit_softcap):
        return xla_attention(q, k, v, mask, scale, logit_softcap)
    aligned = mask.aligned if isinstance(mask, AttentionMask) else q.shape[1] == k.shape[1]
    dense = _no_empty_rows(as_dense(mask))[:, None]
    return jax.nn.dot_product_attention(
        q, k, v, mask=dense, scale=scale, is_causal=aligned, implementation="cudnn"
    )


def _no_empty_rows(mask: jax.Array) -> jax.Array:
    """Let a query with no key at all (padding) see itself, so no kernel divides by zero."""
    t, s = mask.shape[-2:]
    if t != s:
        return mask
    empty = ~jnp.any(mask, axis=-1, keepdims=True)
    return mask | (empty & jnp.eye(t, dtype=bool))


# ----------------------------------------------------------------------------- splash (TPU)
def splash_supports(q: jax.Array, k: jax.Array, mask: Mask, *, interpret: bool = False) -> bool:
    """Whether the splash kernel takes this call: an aligned AttentionMask, length % 128 == 0."""
    if not interpret and jax.default_backend() != "tpu":
        return False
    return (
        isinstance(mask, AttentionMask)
        and mask.aligned
        and q.shape[1] == k.shape[1]
        and q.shape[1] % 128 == 0
        and q.shape[2] % k.shape[2] == 0
    )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: Mask,
    scale: float,
    logit_softcap: float | None = None,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (TPU; `interpret=True` runs the same kernel on CPU for tests).

    Segment ids carry packing and padding (a padding token gets id 0, and padding queries attend
    to padding keys: their rows are don't-care); the window and the soft-cap are kernel options.
    Under `jaxtune.sharding.use_mesh` the kernel runs per shard (shard_map over batch and heads,
    see `layout`).
    """
    if not splash_supports(q, k, mask, interpret=interpret):
        return xla_attention(q, k, v, mask, scale, logit_softcap)
    seg = mask.q_segments if mask.q_segments is not None else jnp.ones_like(mask.q_slots)
    seg = jnp.where(mask.k_valid, seg, 0).astype(jnp.int32)  # aligned: queries are the keys
    q = q * jnp.asarray(scale, q.dtype)
    run = functools.partial(
        _splash_local, softcap=logit_softcap, window=mask.window, interpret=interpret
    )
    sliding = mask.sliding if mask.window is not None else None
    if sliding is None:
        sliding = jnp.asarray(mask.window is not None)
    return _per_shard(run, q, k, v, seg, sliding)


def _splash_local(q, k, v, seg, sliding, *, softcap, window, interpret):
    """Splash on local (B, T, H, D) blocks: one MQA kernel per KV head, vmapped over batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    _, t, h, d = q.shape
    n_kv = k.shape[2]
    g = h // n_kv
    block = next(size for size in (512, 256, 128) if t % size == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )

    def kernel(local: bool):
        shape = (t, t)
        one = sm.LocalMask(shape, (window - 1, 0), 0) if local else sm.CausalMask(shape)
        return sk.make_splash_mqa(
            sm.MultiHeadMask([one] * g),
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=1,
            attn_logits_soft_cap=softcap,
            interpret=interpret,
        )

    def per_row(kern, q_row, k_row, v_row, seg_row):  # (T, H, D), (T, K, D), (T,)
        qg = q_row.reshape(t, n_kv, g, d).transpose(1, 2, 0, 3)  # (K, G, T, D)
        ids = sk.SegmentIds(q=seg_row, kv=seg_row)
        out = jax.vmap(lambda a, b_, c: kern(a, b_, c, segment_ids=ids))(
            qg, k_row.transpose(1, 0, 2), v_row.transpose(1, 0, 2)
        )  # (K, G, T, D)
        return out.transpose(2, 0, 1, 3).reshape(t, h, d)

    def run(local: bool):
        kern = kernel(local)
        return jax.vmap(functools.partial(per_row, kern))(q, k, v, seg).astype(q.dtype)

    if window is None:
        return run(False)
    return jax.lax.cond(sliding, lambda: run(True), lambda: run(False))


def _per_shard(fn, q, k, v, seg, sliding):
    """Run a per-device kernel under the active mesh layout (shard_map), or directly."""
    current = current_layout()
    if current is None or current[0].size == 1:
        return fn(q, k, v, seg, sliding)
    mesh, spec = current
    kv_spec = spec(("batch", None, "kv", None), k.shape)
    heads = "heads" if len(kv_spec) > 2 and kv_spec[2] is not None else None
    q_spec = spec(("batch", None, heads, None), q.shape)
    if heads is not None and (len(q_spec) < 3 or q_spec[2] != kv_spec[2]):
        q_spec, kv_spec = spec(("batch",), q.shape), spec(("batch",), k.shape)
    row = PartitionSpec(*tuple(q_spec)[:1])
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, row, PartitionSpec()),
        out_specs=q_spec,
        check_vma=False,
    )(q, k, v, seg, sliding)


# ----------------------------------------------------------------------------- mesh layout
# (mesh, spec(logical_axes, shape) -> PartitionSpec) while `jaxtune.sharding.use_mesh` is active:
# kernels that run per device (Pallas) read it to wrap themselves in shard_map. It lives here so
# that models import nothing from jaxtune.sharding (which sits above them).
Layout = tuple[Mesh, Callable[[Sequence[str | None], Sequence[int]], PartitionSpec]]
_LAYOUT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar(
    "jaxtune_attention_layout", default=None
)


def current_layout() -> Layout | None:
    """The active (mesh, spec) layout, or None (one device, or no jaxtune mesh in use)."""
    return _LAYOUT.get()


@contextlib.contextmanager
def layout(mesh: Mesh, spec: Callable[..., PartitionSpec]) -> Iterator[None]:
    """Make `(mesh, spec)` the layout per-device kernels shard over (see `_per_shard`)."""
    token = _LAYOUT.set((mesh, spec))
    try:
        yield
    finally:
        _LAYOUT.reset(token)


# ----------------------------------------------------------------------------- dispatch
def fused_attention(q, k, v, mask: Mask, scale: float, logit_softcap: float | None = None):
    """The fastest kernel for this backend and call: cudnn (GPU), splash (TPU), else xla."""
    backend = jax.default_backend()
    if backend == "gpu":
        return cudnn_attention(q, k, v, mask, scale, logit_softcap)
    if backend == "tpu" and splash_supports(q, k, mask) and q.shape[-1] % 128 == 0:
        return splash_attention(q, k, v, mask, scale, logit_softcap)
    return xla_attention(q, k, v, mask, scale, logit_softcap)


def backend_impl() -> str:
    """What "auto" runs on this backend: the fused kernels (cuDNN / splash, each falling back to
    XLA where it does not apply) on GPU and TPU; the exact reference on CPU."""
    return "fused" if jax.default_backend() in ("gpu", "tpu") else "reference"


def auto_attention(q, k, v, mask: Mask, scale: float, logit_softcap: float | None = None):
    """The attention this backend runs best (see `backend_impl`); the default of jaxtune runs."""
    return ATTENTION_IMPLS[backend_impl()](q, k, v, mask, scale, logit_softcap)


def _s2(q, k, v, mask: Mask, scale: float, logit_softcap: float | None = None):
    from jaxtune.models.s2_attention import s2_attention

    return s2_attention(q, k, v, mask, scale, logit_softcap)


# name -> function(q, k, v, mask, scale, logit_softcap) -> out; other kernels register here.
ATTENTION_IMPLS: dict[str, AttentionFn] = {
    "auto": auto_attention,
    "reference": attention,
    "xla": xla_attention,
    "cudnn": cudnn_attention,
    "splash": splash_attention,
    "fused": fused_attention,
    "s2": _s2,
}
