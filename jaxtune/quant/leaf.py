"""`QuantizedWeight`: an NF4 / FP4 / int8 kernel that stands in for a float `[..., in, out]` weight.

It implements the weight-leaf protocol of `jaxtune.models.layers.linear`: `linear(x)` dequantizes
inside the jitted matmul, in the leaf's compute dtype, and `materialize()` returns the dense
weight. The tree before and after `quant.quantize(params)`:

    q_proj/kernel: f32[L, in, out]
      -> q_proj/kernel: QuantizedWeight(method="nf4", block_size=64)
           data          uint8[L, in/2, out]       two 4-bit codes per byte along `in`
           absmax        uint8[L, in/B, out]       (f32 without double quantization)
           absmax_scale  f32[L, ceil(in*out/B/256)]  (double quantization only)
           absmax_offset f32[L]                     (double quantization only)

int8 leaves hold `data int8[L, in, out]` and `absmax f32[L, in/B, out]` (B = in per channel).
Every array keeps the leading layer axes, so `lax.scan` slices a stacked leaf per layer; static
metadata lives in the pytree aux data. All arrays are plain uint8/int8/float32 (orbax saves them).

Sharding: `data` and `absmax` keep the `[..., in, out]` axes of the weight (`in` divided by 2 or
by B), so the partition spec of the float kernel applies to them as long as the sharded `in`
count divides `in/2` and `in/B`; `absmax_scale` and `absmax_offset` are tiny: replicate them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.quant.blockwise import dequantize_4bit, dequantize_absmax
from jaxtune.quant.codebooks import FOUR_BIT_METHODS
from jaxtune.quant.int8 import dequantize_int8


@flax.struct.dataclass
class QuantizedWeight:
    """A blockwise-quantized weight `[..., in, out]` (see the module docstring for the layout)."""

    data: jax.Array
    absmax: jax.Array
    method: str = flax.struct.field(pytree_node=False)  # "nf4" | "fp4" | "int8"
    block_size: int = flax.struct.field(pytree_node=False)
    orig_dtype: str = flax.struct.field(pytree_node=False)  # dtype of the weight it replaces
    compute_dtype: str = flax.struct.field(pytree_node=False)  # dtype of the matmul
    absmax_scale: jax.Array | None = None
    absmax_offset: jax.Array | None = None

    # ------------------------------------------------------------------ array-like metadata
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the dense weight `[..., in, out]`."""
        *lead, rows, n_out = self.data.shape
        return (*lead, rows * 2 if self.method in FOUR_BIT_METHODS else rows, n_out)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> jnp.dtype:
        """dtype of the dense weight that `materialize()` returns."""
        return jnp.dtype(self.orig_dtype)

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def nbytes(self) -> int:
        """Bytes stored (all arrays)."""
        arrays = jax.tree.leaves(self)
        return int(sum(np.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays))

    # ------------------------------------------------------------------ the protocol
    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        """The dense weight `[..., in, out]`: values computed in float32, then cast (compiled
        once per shape, also when called outside `jit`)."""
        return _dequantize(self, jnp.dtype(dtype).name)

    def materialize(self) -> jax.Array:
        """The dense weight in the dtype of the weight it replaced."""
        return self.dequantize(self.dtype)

    def linear(self, x: jax.Array) -> jax.Array:
        """x [..., in] @ W [in, out], W dequantized in the compute dtype; the result in x's dtype.

        The backward pass dequantizes again instead of keeping W: no dense copy of the weight
        outlives the matmul. The quantized weight itself gets no gradient (it is frozen).
        """
        compute = jnp.dtype(self.compute_dtype)
        return _quantized_matmul(x.astype(compute), self).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="dtype")
def _dequantize(w: QuantizedWeight, dtype: str) -> jax.Array:
    if w.method == "int8":
        return dequantize_int8(w.data, w.absmax, w.block_size, dtype)
    absmax = w.absmax
    if w.double_quant:
        absmax = dequantize_absmax(absmax, w.absmax_scale, w.absmax_offset)
    return dequantize_4bit(w.data, absmax, w.block_size, w.method, dtype)


@jax.custom_vjp
def _quantized_matmul(x: jax.Array, w: QuantizedWeight) -> jax.Array:
    return jnp.einsum("...i,io->...o", x, w.dequantize(x.dtype))


def _forward(x: jax.Array, w: QuantizedWeight) -> tuple[jax.Array, QuantizedWeight]:
    return _quantized_matmul(x, w), w  # the residual is the quantized leaf, not W


def _backward(w: QuantizedWeight, g: jax.Array) -> tuple[jax.Array, QuantizedWeight]:
    dx = jnp.einsum("...o,io->...i", g, w.dequantize(g.dtype))
    return dx, jax.tree.map(_zero_cotangent, w)


def _zero_cotangent(a: jax.Array) -> jax.Array:
    if jnp.issubdtype(a.dtype, jnp.integer):
        return np.zeros(a.shape, dtype=jax.dtypes.float0)
    return jnp.zeros_like(a)


_quantized_matmul.defvjp(_forward, _backward)


def is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedWeight)
