"""Export a QLoRA model as a plain Hugging Face checkpoint: adapters merged into the dequantized
base, written in bf16/fp16/fp32 safetensors in one step (PEFT cannot merge into a 4-bit model).

    quant.export_merged("out/", model, params, dtype=jnp.bfloat16, tokenizer=tok)

The base is dequantized to float32 first and each adapter leaf is folded in through its own
`materialize()` (the weight-leaf protocol), in float32; only the written tensors are rounded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.models.decoder import CausalLM
from jaxtune.models.layers import LinearLeaf
from jaxtune.models.save import save
from jaxtune.quant.errors import QuantizationError
from jaxtune.quant.targets import leaves_with_paths
from jaxtune.quant.transform import dequantize


def merged_params(params: Any, dtype: Any = jnp.float32) -> Any:
    """Plain arrays: quantized leaves dequantized, adapter leaves merged (in float32), all cast
    to `dtype`. One weight at a time, so only one dense temporary exists beside the result."""
    is_leaf = lambda x: isinstance(x, LinearLeaf)
    name = jnp.dtype(dtype).name
    merge = lambda x: _merge(x, name) if is_leaf(x) else jnp.asarray(x, name)
    return jax.tree.map(merge, params, is_leaf=is_leaf)


@functools.partial(jax.jit, static_argnames="dtype")
def _merge(leaf: LinearLeaf, dtype: str) -> jax.Array:
    dense = dequantize(leaf, jnp.float32)  # a quantized base inside an adapter, too
    return jnp.asarray(dense.materialize() if isinstance(dense, LinearLeaf) else dense, dtype)


def export_merged(
    directory: str | os.PathLike,
    model: CausalLM,
    params: Any,
    dtype: Any = jnp.bfloat16,
    tokenizer: Any = None,
) -> Path:
    """Write config.json + safetensors (in `dtype`) that transformers loads without PEFT or
    bitsandbytes."""
    _check_mergeable(params)
    merged = merged_params(params, jnp.float32)
    _check_fits(model, merged)
    return save(directory, model, merged, tokenizer, dtype=dtype)


def _check_mergeable(params: Any) -> None:
    """Trace each weight leaf's `materialize` (no compute): a leaf that cannot be merged
    (a Houlsby adapter) raises its own error before any work is done."""
    is_leaf = lambda x: isinstance(x, LinearLeaf)
    for leaf in jax.tree.leaves(params, is_leaf=is_leaf):
        if is_leaf(leaf):
            jax.eval_shape(lambda w: w.materialize(), leaf)


def _check_fits(model: CausalLM, merged: Any) -> None:
    """The merged tree must have exactly the model's params (no extra adapter modules)."""
    ours = {path for path, _ in leaves_with_paths(merged)}
    shapes = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        model.param_shapes(),
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x),
    )
    theirs = {path for path, _ in leaves_with_paths(shapes)}
    extra = sorted(ours - theirs)
    if extra:
        raise QuantizationError(
            f"cannot merge into a Hugging Face checkpoint: params hold {len(extra)} entries the "
            f"model has no place for, e.g. {extra[:3]} (Houlsby adapters are extra modules); "
            "export them as an adapter with jaxtune.peft.save_adapter instead"
        )
