"""`save(dir, model, params)`: config.json + safetensors that transformers loads to the same
logits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import CheckpointError
from jaxtune.models.config import ModelConfig
from jaxtune.models.decoder import CausalLM, Params
from jaxtune.models.families import family_for
from jaxtune.models.layers import LinearLeaf
from jaxtune.models.safetensors_io import write_safetensors
from jaxtune.models.weight_map import to_hf_state

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
DTYPE_NAMES = {jnp.float32: "float32", jnp.bfloat16: "bfloat16", jnp.float16: "float16"}


def save(
    directory: str | os.PathLike,
    model: CausalLM,
    params: Params,
    tokenizer: Any = None,
    *,
    dtype: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write an HF checkpoint. Params must be plain arrays: merge adapters / dequantize first.

    dtype: the stored dtype (None keeps the params' own). Above `max_shard_bytes` the weights
    are split into model-0000i-of-0000n.safetensors with an index, as transformers does.
    """
    directory = Path(directory)
    leaves = _check_params(model, params)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    family = family_for(cfg.hf_config.get("model_type", cfg.family))
    target = None if dtype is None else jnp.dtype(dtype)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in to_hf_state(family, params, cfg.num_layers):
        if target is not None:
            arr = arr.astype(target)
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    stored = jnp.dtype(target or leaves[0].dtype)
    _write_shards(directory, shards)
    _write_config(directory, cfg, family.architecture, stored)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _check_params(model: CausalLM, params: Params) -> list[Any]:
    """The leaves of `params`, after checking they are plain arrays of the model's shapes."""
    expected = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_flatten_with_path(
            model.param_shapes(), is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    }
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, LinearLeaf)
    )[0]
    for keypath, leaf in flat:
        name = jax.tree_util.keystr(keypath)
        if isinstance(leaf, LinearLeaf):
            raise CheckpointError(
                f"save() needs plain weights, but params{name} is a {type(leaf).__name__} "
                "(an adapter or quantized leaf): call jaxtune.peft.merge(params) (and "
                "quant.dequantize) first, or save the adapter alone with "
                "jaxtune.peft.save_adapter."
            )
        if not isinstance(leaf, jax.Array | np.ndarray):
            raise CheckpointError(
                f"save(): params{name} is a {type(leaf).__name__}, not an array; params must "
                "hold only jax or numpy arrays"
            )
        if name not in expected:
            raise CheckpointError(f"save(): params{name} is not a parameter of this model")
        if tuple(leaf.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"save(): params{name} has shape {tuple(leaf.shape)}, but the model's config "
                f"implies {tuple(expected[name])}"
            )
    missing = sorted(set(expected) - {jax.tree_util.keystr(k) for k, _ in flat})
    if missing:
        raise CheckpointError(f"save(): params lack {len(missing)} leaves, e.g. {missing[:3]}")
    return [leaf for _, leaf in flat]


def _write_shards(directory: Path, shards: list[dict[str, np.ndarray]]) -> None:
    meta = {"format": "pt"}
    for old in directory.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        write_safetensors(directory / "model.safetensors", shards[0], meta)
        return
    n = len(shards)
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(directory / name, shard, meta)
        weight_map.update({k: name for k in shard})
        total += sum(a.nbytes for a in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_config(directory: Path, cfg: ModelConfig, architecture: str, dtype: np.dtype) -> None:
    hf = dict(cfg.hf_config)
    hf["architectures"] = [architecture]
    hf.setdefault("model_type", cfg.family)
    hf["torch_dtype"] = hf["dtype"] = str(np.dtype(dtype).name)
    tmp = directory / ".config.json.tmp"
    tmp.write_text(json.dumps(hf, indent=2, sort_keys=True))
    os.replace(tmp, directory / "config.json")
