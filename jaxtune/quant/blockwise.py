"""Blockwise 4-bit quantization (NF4, FP4) with double-quantized absmax, as bitsandbytes does it.

Pure functions over weights in jaxtune's layout `[..., in, out]` (leading axes are stacked layers;
each layer is quantized on its own, like one `nn.Linear` in bitsandbytes).

bitsandbytes quantizes a torch weight `W [out, in]` flattened row-major in blocks of `B`
consecutive values. With `in % B == 0` a block is `B` consecutive inputs of one output feature,
so here block `b` of column `o` is `w[b*B:(b+1)*B, o]`. Stored arrays keep the in/out axes:

    codes   uint8 [..., in/2, out]   two codes per byte along `in`: row 2i in the high nibble,
                                     row 2i+1 in the low one (bnb packs element 2k high, 2k+1 low)
    absmax  f32   [..., in/B, out]   max |w| of each block

so `codes[..., i, o]` is byte `o*in/2 + i` of bnb's packed tensor (`codes.T` flattened), and
`absmax.T` flattened is bnb's `absmax`. Dequantized values are `CODE[c] * absmax` in float32,
then cast, exactly as bnb's `dequantize_4bit`.

Double quantization (QLoRA's "nested" statistics) quantizes each layer's absmax, taken in bnb's
order (`absmax.T` flattened), as bnb's `quantize_4bit(compress_statistics=True)` does:
offset = mean(absmax); (absmax - offset) in blocks of 256 (the last one partial), each scaled by
1 / max|.| and coded with the 8-bit dynamic map the way bnb's CPU kernel picks codes:

    absmax_codes  uint8 [..., in/B, out]          (same layout as absmax)
    absmax_scale  f32   [..., ceil(in*out/B/256)]  max |absmax - offset| per block of 256
    absmax_offset f32   [...]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.quant.codebooks import DYNAMIC8, DYNAMIC8_THRESHOLDS, bucket_bounds, code4

NESTED_BLOCK = 256


def blocks_of(w: jax.Array, block_size: int) -> jax.Array:
    """[..., in, out] -> [..., in/B, B, out]: the quantization blocks along `in`."""
    *lead, n_in, n_out = w.shape
    return w.reshape(*lead, n_in // block_size, block_size, n_out)


def absmax_of(blocks: jax.Array) -> jax.Array:
    """[..., nb, B, out] -> [..., nb, out]: max |value| of each block (float32)."""
    return jnp.max(jnp.abs(blocks.astype(jnp.float32)), axis=-2)


def _inverse(absmax: jax.Array) -> jax.Array:
    """1 / absmax in float32 (0 for an all-zero block, whose values all quantize to 0)."""
    safe = jnp.where(absmax > 0, absmax, 1.0)
    return jnp.where(absmax > 0, 1.0 / safe, 0.0)


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """uint8 codes [..., in, out] (< 16) -> [..., in/2, out]: even rows high, odd rows low."""
    return (codes[..., 0::2, :] << 4) | codes[..., 1::2, :]


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """uint8 [..., in/2, out] -> codes [..., in, out] (inverse of `pack_nibbles`)."""
    *lead, half, n_out = packed.shape
    pairs = jnp.stack([packed >> 4, packed & 0xF], axis=-2)  # [..., in/2, 2, out]
    return pairs.reshape(*lead, 2 * half, n_out)


def quantize_4bit(w: jax.Array, block_size: int, method: str) -> tuple[jax.Array, jax.Array]:
    """w [..., in, out] -> (packed codes uint8 [..., in/2, out], absmax f32 [..., in/B, out])."""
    bounds, bucket_codes = bucket_bounds(method)
    blocks = blocks_of(w.astype(jnp.float32), block_size)
    absmax = absmax_of(blocks)
    scaled = jnp.clip(blocks * _inverse(absmax)[..., None, :], -1.0, 1.0)
    # torch.bucketize(right=False): the number of midpoints strictly below the value.
    bucket = sum((scaled > b).astype(jnp.uint8) for b in bounds)
    codes = jnp.asarray(bucket_codes)[bucket].reshape(w.shape)
    return pack_nibbles(codes), absmax


def dequantize_4bit(
    packed: jax.Array, absmax: jax.Array, block_size: int, method: str, dtype=jnp.float32
) -> jax.Array:
    """(packed [..., in/2, out], absmax [..., in/B, out]) -> w [..., in, out] in `dtype`."""
    values = jnp.asarray(code4(method))[unpack_nibbles(packed)]
    w = blocks_of(values, block_size) * absmax[..., None, :]
    return w.reshape(values.shape).astype(dtype)


# ----------------------------------------------------------------------------- double quant
def _bnb_order(absmax: jax.Array) -> jax.Array:
    """[..., nb, out] -> [..., out*nb]: one layer's absmax in bitsandbytes' flat order."""
    return jnp.swapaxes(absmax, -1, -2).reshape(*absmax.shape[:-2], -1)


def _from_bnb_order(flat: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    *lead, nb, n_out = shape
    return jnp.swapaxes(flat.reshape(*lead, n_out, nb), -1, -2)


def _nested_blocks(flat: jax.Array) -> jax.Array:
    """[..., n] -> [..., ceil(n/256), 256], zero padded (zeros never raise a block's max)."""
    n = flat.shape[-1]
    pad = -n % NESTED_BLOCK
    widths = [(0, 0)] * (flat.ndim - 1) + [(0, pad)]
    return jnp.pad(flat, widths).reshape(*flat.shape[:-1], -1, NESTED_BLOCK)


def code8(v: jax.Array) -> jax.Array:
    """bitsandbytes' CPU 8-bit code of normalised values v in [-1, 1] (see codebooks), uint8:
    the number of thresholds <= v, by an unrolled branchless binary search (8 steps)."""
    table = jnp.asarray(np.append(DYNAMIC8_THRESHOLDS, np.inf).astype(np.float32))  # 256
    pos = jnp.zeros(v.shape, jnp.int32)
    for step in (128, 64, 32, 16, 8, 4, 2, 1):
        pos = jnp.where(table[pos + step - 1] <= v, pos + step, pos)
    return pos.astype(jnp.uint8)


def quantize_absmax(
    absmax: jax.Array, offset: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """absmax f32 [..., nb, out] -> (codes uint8 [..., nb, out], scale [..., n2], offset [...]).

    offset defaults to the mean of each layer's absmax (bitsandbytes' choice).
    """
    flat = _bnb_order(absmax)
    if offset is None:
        offset = jnp.mean(flat, axis=-1)
    blocks = _nested_blocks(flat - offset[..., None])
    scale = jnp.max(jnp.abs(blocks), axis=-1)
    v = jnp.clip(blocks * _inverse(scale)[..., None], -1.0, 1.0)
    codes = jnp.where(scale[..., None] > 0, code8(v), 0).astype(jnp.uint8)
    codes = codes.reshape(*flat.shape[:-1], -1)[..., : flat.shape[-1]]
    return _from_bnb_order(codes, absmax.shape), scale, offset


def _rounded(p: jax.Array) -> jax.Array:
    """p (NaN aside), but XLA can no longer fuse it with a following add into one FMA: bnb
    rounds the product and the sum separately."""
    return jnp.where(jnp.isnan(p), jnp.zeros_like(p), p)


def dequantize_absmax(codes: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    """Inverse of `quantize_absmax`: DYNAMIC8[code] * scale of its block + offset (float32)."""
    flat = _bnb_order(codes)
    n = flat.shape[-1]
    values = _rounded(_nested_blocks(jnp.asarray(DYNAMIC8)[flat]) * scale[..., None])
    values = values.reshape(*flat.shape[:-1], -1)[..., :n] + offset[..., None]
    return _from_bnb_order(values, codes.shape)
