"""`quantize(params, targets, method)` / `dequantize(params)`: float kernels <-> `QuantizedWeight`.

    params = quant.quantize(params, targets="all-linear", method="nf4")  # QLoRA's base
    logits = model.apply(params, ids)       # every quantized matmul dequantizes on the fly
    params = quant.dequantize(params)       # plain arrays again (the quantized values)

NF4/FP4 follow bitsandbytes' `quantize_4bit` (blocks of 64 by default, double quantization of
the absmax on by default, as in QLoRA); int8 is symmetric absmax per block or per output channel.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.quant.blockwise import quantize_4bit, quantize_absmax
from jaxtune.quant.codebooks import FOUR_BIT_METHODS, METHODS
from jaxtune.quant.errors import QuantizationError
from jaxtune.quant.int8 import quantize_int8
from jaxtune.quant.leaf import QuantizedWeight, is_quantized
from jaxtune.quant.targets import Targets, map_selected, select


def default_compute_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How to quantize: method, block size (None = per output channel, int8 only), double
    quantization of the absmax (4-bit only), the dtype of the matmul."""

    method: str = "nf4"
    block_size: int | None = 64
    double_quant: bool = True
    compute_dtype: str = "float32"

    @classmethod
    def make(
        cls,
        method: str = "nf4",
        block_size: int | None = 64,
        double_quant: bool | None = None,
        compute_dtype: Any = None,
    ) -> QuantSpec:
        """Validated spec; double_quant None means on for nf4/fp4 and off for int8."""
        if method not in METHODS:
            raise QuantizationError(
                f"method={method!r} is not a quantization method; use one of {', '.join(METHODS)}"
            )
        four_bit = method in FOUR_BIT_METHODS
        if block_size is None and four_bit:
            raise QuantizationError(
                f"block_size=None (one scale per output channel) is for int8 only; {method} "
                "needs blocks, e.g. block_size=64"
            )
        if block_size is not None and (
            not isinstance(block_size, int) or block_size <= 0 or (four_bit and block_size % 2)
        ):
            kind = "an even positive" if four_bit else "a positive"
            raise QuantizationError(
                f"block_size={block_size!r}: {method} needs {kind} integer (64 is usual)"
            )
        if double_quant is None:
            double_quant = four_bit
        if double_quant and not four_bit:
            raise QuantizationError(
                "double_quant=True applies to the 4-bit methods (nf4, fp4) only; int8 keeps "
                "float32 scales. Pass double_quant=False or None for int8"
            )
        compute = jnp.dtype(compute_dtype or default_compute_dtype()).name
        return cls(method, block_size, bool(double_quant), compute)

    def block_for(self, path: str, shape: tuple[int, ...]) -> int:
        """The block size for a weight of `shape` ([..., in, out]); an error if it does not fit."""
        n_in = shape[-2]
        block = n_in if self.block_size is None else self.block_size
        if n_in % block:
            fits = [b for b in (32, 64, 128, 256) if n_in % b == 0]
            hint = f"e.g. block_size={fits[-1]}" if fits else "or exclude it from targets"
            raise QuantizationError(
                f"block_size={block} does not divide the input dimension {n_in} of {path} "
                f"(shape {tuple(shape)}): blocks run along the input axis. Pick a block size "
                f"that divides {n_in} ({hint})"
            )
        return block


@functools.partial(jax.jit, static_argnames=("method", "block_size", "double_quant"))
def quantize_arrays(
    w: jax.Array, method: str, block_size: int, double_quant: bool
) -> dict[str, jax.Array]:
    """The arrays of a `QuantizedWeight` for a float weight `[..., in, out]`."""
    if method == "int8":
        data, absmax = quantize_int8(w, block_size)
        return {"data": data, "absmax": absmax}
    data, absmax = quantize_4bit(w, block_size, method)
    if not double_quant:
        return {"data": data, "absmax": absmax}
    codes, scale, offset = quantize_absmax(absmax)
    return {"data": data, "absmax": codes, "absmax_scale": scale, "absmax_offset": offset}


def leaf_from_arrays(
    arrays: dict[str, jax.Array], spec: QuantSpec, block_size: int, orig_dtype: Any
) -> QuantizedWeight:
    return QuantizedWeight(
        method=spec.method,
        block_size=block_size,
        orig_dtype=jnp.dtype(orig_dtype).name,
        compute_dtype=spec.compute_dtype,
        **arrays,
    )


def quantize_weight(w: jax.Array, spec: QuantSpec, path: str = "weight") -> QuantizedWeight:
    """One float weight `[..., in, out]` -> its `QuantizedWeight` (each layer on its own)."""
    block = spec.block_for(path, tuple(w.shape))
    arrays = quantize_arrays(w, spec.method, block, spec.double_quant)
    return leaf_from_arrays(arrays, spec, block, w.dtype)


def quantize(
    params: Any,
    targets: Targets = "all-linear",
    method: str = "nf4",
    block_size: int | None = 64,
    double_quant: bool | None = None,
    compute_dtype: Any = None,
) -> Any:
    """Replace the selected kernels by `QuantizedWeight` leaves (see `jaxtune.quant.targets`).

    method: "nf4" | "fp4" (bitsandbytes' 4-bit types) | "int8" (symmetric absmax).
    block_size: values per absmax block along the input axis; None = per output channel (int8).
    double_quant: quantize the 4-bit absmax to 8 bits in blocks of 256 (None: on for 4-bit).
    compute_dtype: dtype of the dequantized matmul (None: bfloat16 on accelerators, else f32).
    """
    spec = QuantSpec.make(method, block_size, double_quant, compute_dtype)
    chosen = select(params, targets)
    return map_selected(params, chosen, lambda path, w: quantize_weight(w, spec, path))


def dequantize(params: Any, dtype: Any = None) -> Any:
    """Every `QuantizedWeight` (also the base of an adapter) -> its dense array, in `dtype` or
    in the dtype of the weight it replaced."""

    def dense(x: Any) -> Any:
        return x.dequantize(dtype or x.dtype) if is_quantized(x) else x

    return jax.tree.map(dense, params, is_leaf=is_quantized)
