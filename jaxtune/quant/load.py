"""`load_quantized(path)`: load a checkpoint and quantize it while reading, one layer at a time.

Like `jaxtune.models.load`, but each targeted kernel is quantized per layer as it is read: the
full-precision copy held at any moment is one layer's tensor, so a model whose float weights do
not fit in host memory still loads when its quantized weights do. The result equals
`quant.quantize(models.load(path, dtype)[1], ...)` exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import CheckpointError
from jaxtune.models.decoder import CausalLM, Params
from jaxtune.models.families import family_for
from jaxtune.models.load import ShardingFn, open_safetensors, read_config, resolve
from jaxtune.models.weight_map import LeafMapping, leaf_mappings
from jaxtune.quant.targets import Targets, select
from jaxtune.quant.transform import QuantSpec, leaf_from_arrays, quantize_arrays

# The arrays of a quantized leaf that keep the [..., in, out] axes of the weight (and so take
# the weight's sharding); the others are small and stay replicated.
WEIGHT_SHAPED_FIELDS = ("data", "absmax")


def load_quantized(
    path_or_id: str | Path,
    targets: Targets = "all-linear",
    method: str = "nf4",
    block_size: int | None = 64,
    double_quant: bool | None = None,
    compute_dtype: Any = None,
    *,
    dtype: Any = jnp.float32,
    shardings: ShardingFn | None = None,
    remat: str = "none",
    attention_impl: str = "auto",
    revision: str | None = None,
) -> tuple[CausalLM, Params]:
    """(model, params) with the targeted kernels quantized (see `quant.quantize` for the knobs).

    dtype: the dtype of the unquantized params, and of the weights before quantization (as
      `models.load(path, dtype)` would give them).
    compute_dtype: the model's compute dtype and the dtype of the quantized matmuls.
    shardings: as in `models.load`; a quantized leaf's `data` and `absmax` are placed with the
      sharding the function gives for the weight's name and their own shape.
    """
    spec = QuantSpec.make(method, block_size, double_quant, compute_dtype)
    location = resolve(path_or_id, revision)
    if location.suffix == ".gguf":
        from jaxtune.models.gguf import read_gguf

        hf_config, tensors = read_gguf(location)
        source = str(location)
    else:
        hf_config = read_config(location)
        tensors = open_safetensors(location)
        source = str(location / "config.json")
    family = family_for(hf_config.get("model_type"), source)
    config = family.config_from_hf(hf_config)
    model = CausalLM(config, compute_dtype, remat, attention_impl)

    shapes = model.param_shapes()
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), shapes, is_leaf=_is_shape)
    chosen = set(select(abstract, targets))
    leaves = []
    for m, shape in leaf_mappings(family, shapes, config.num_layers):
        slices = (_read(tensors, m, key, shape, family, config, str(location)) for key in m.hf_keys)
        if m.name in chosen:
            leaves.append(_quantized_leaf(slices, m, shape, spec, dtype, shardings))
        else:
            host = np.asarray(np.stack(list(slices)) if m.stacked else next(slices), dtype)
            sharding = shardings(m.name, shape) if shardings else None
            leaves.append(jax.device_put(host, sharding) if sharding else jnp.asarray(host))
    treedef = jax.tree.structure(shapes, is_leaf=_is_shape)
    return model, jax.tree.unflatten(treedef, leaves)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _read(
    tensors: Mapping[str, np.ndarray],
    m: LeafMapping,
    key: str,
    shape: tuple[int, ...],
    family: Any,
    config: Any,
    source: str,
) -> np.ndarray:
    """One per-layer tensor in the decoder layout (the checks of `models.load`)."""
    short = key.removeprefix(family.optional_prefix)
    if key not in tensors and family.optional_prefix and short in tensors:
        key = short
    if key not in tensors:
        raise CheckpointError(
            f"{source}: tensor {key!r} is missing (needed for {m.name}); the checkpoint does not "
            f"match its config.json ({config.family}, {config.num_layers} layers)"
        )
    arr = tensors[key]
    arr = arr.T if m.transpose and arr.ndim == 2 else arr
    expected = shape[1:] if m.stacked else shape
    if tuple(arr.shape) != tuple(expected):
        raise CheckpointError(
            f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)} but config.json "
            f"implies a weight of shape {tuple(expected)} here (in jaxtune's [in, out] layout)"
        )
    return arr


def _quantized_leaf(slices, m: LeafMapping, shape, spec: QuantSpec, dtype, shardings):
    """Quantize layer by layer, then stack the (small) quantized arrays on the layer axis."""
    block = spec.block_for(m.name, shape)
    pieces = []
    for arr in slices:
        w = np.asarray(arr, dtype)  # this layer's float copy, the only one alive
        out = quantize_arrays(w, spec.method, block, spec.double_quant)
        pieces.append({k: np.asarray(v) for k, v in out.items()})
        del w
    fields = {k: np.stack([p[k] for p in pieces]) if m.stacked else pieces[0][k] for k in pieces[0]}
    arrays = {}
    for name, host in fields.items():
        sharding = None
        if shardings and name in WEIGHT_SHAPED_FIELDS:
            sharding = shardings(m.name, host.shape)
        arrays[name] = jax.device_put(host, sharding) if sharding else jnp.asarray(host)
    return leaf_from_arrays(arrays, spec, block, dtype)
