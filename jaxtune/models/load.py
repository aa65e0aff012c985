"""`load(path_or_id) -> (model, params)`: HF safetensors checkpoints (local or hub) and GGUF files.

Tensors stream one decoder leaf at a time: the L per-layer tensors of a stacked leaf are read
from memory-mapped files, converted, stacked and placed (on their sharding when one is given)
before the next leaf is read. Pickle checkpoints (`.bin`, `.pt`) are refused: we never unpickle.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import CheckpointError
from jaxtune.models.config import ModelConfig
from jaxtune.models.decoder import CausalLM, Params
from jaxtune.models.families import Family, family_for
from jaxtune.models.safetensors_io import SafetensorsFile
from jaxtune.models.weight_map import leaf_mappings

# (decoder leaf name like "layers/self_attn/q_proj/kernel", shape) -> sharding, or None.
ShardingFn = Callable[[str, tuple[int, ...]], jax.sharding.Sharding | None]
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template*",
    "vocab.json",
    "merges.txt",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load(
    path_or_id: str | Path,
    dtype: Any = jnp.float32,
    *,
    shardings: ShardingFn | None = None,
    compute_dtype: Any = None,
    remat: str = "none",
    attention_impl: str = "auto",
    revision: str | None = None,
) -> tuple[CausalLM, Params]:
    """Load a checkpoint directory, a `.gguf` file, or a Hugging Face hub id.

    dtype: the dtype the params are stored in (e.g. jnp.bfloat16).
    shardings: optional placement of each leaf (see `ShardingFn`); None puts leaves on the
      default device.
    """
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
    params = params_from_tensors(tensors, family, config, dtype, shardings, source=str(location))
    return model, params


def load_config(path_or_id: str | Path, revision: str | None = None) -> ModelConfig:
    """Only the architecture of a checkpoint (reads no weights)."""
    location = resolve(path_or_id, revision)
    if location.suffix == ".gguf":
        from jaxtune.models.gguf import read_gguf_config

        hf_config, source = read_gguf_config(location), str(location)
    else:
        hf_config, source = read_config(location), str(location / "config.json")
    return family_for(hf_config.get("model_type"), source).config_from_hf(hf_config)


# ----------------------------------------------------------------------------- locating files
def resolve(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local directory or .gguf file; a hub id is downloaded (safetensors only) first."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or Path(text.split("/")[0]).exists()
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not looks_local:
        return _download(text, revision)
    raise CheckpointError(
        f"{text}: no such file or directory. Give a checkpoint directory (config.json + "
        "*.safetensors), a .gguf file, or a Hugging Face hub id like 'org/name'."
    )


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated model ...
        raise CheckpointError(
            f"{repo_id}: not a local path, and could not download it from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Check the id and your connection, or pass a local "
            "directory."
        ) from None


def read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: expected a checkpoint directory or a .gguf file")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(
            f"{config_path}: missing. A checkpoint directory needs config.json next to its "
            "*.safetensors files (as written by transformers' save_pretrained)."
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None


def open_safetensors(directory: Path) -> Mapping[str, np.ndarray]:
    """All tensors of a checkpoint directory as one lazy name -> array mapping."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (directory / f).exists()})
        if missing:
            raise CheckpointError(
                f"{index}: lists shard files that are missing: {', '.join(missing)}"
            )
        return _ShardedTensors(directory, weight_map)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise CheckpointError(
                f"{directory}: holds only pickle weights ({', '.join(pickles)}). jaxtune never "
                "unpickles (it can run arbitrary code). Convert once with transformers: "
                "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
                "safe_serialization=True), then load OUT."
            )
        raise CheckpointError(f"{directory}: no *.safetensors weights found")
    if len(files) == 1:
        return SafetensorsFile(files[0])
    return _ShardedTensors(directory, {k: f.name for f in files for k in SafetensorsFile(f)})


class _ShardedTensors(Mapping[str, np.ndarray]):
    def __init__(self, directory: Path, weight_map: dict[str, str]):
        self.weight_map = weight_map
        self.files = {name: SafetensorsFile(directory / name) for name in set(weight_map.values())}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.files[self.weight_map[key]][key]

    def __iter__(self):
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)


# ----------------------------------------------------------------------------- conversion
def params_from_tensors(
    tensors: Mapping[str, np.ndarray],
    family: Family,
    config: ModelConfig,
    dtype: Any,
    shardings: ShardingFn | None = None,
    source: str = "checkpoint",
) -> Params:
    """Build the decoder params from HF-named tensors, one leaf at a time."""
    shapes = CausalLM(config).param_shapes()
    mappings = leaf_mappings(family, shapes, config.num_layers)
    used: set[str] = set()
    leaves = []
    for m, shape in mappings:
        per_layer_shape = shape[1:] if m.stacked else shape
        slices = []
        for key in m.hf_keys:
            short = key.removeprefix(family.optional_prefix)
            if key not in tensors and family.optional_prefix and short in tensors:
                key = short
            if key not in tensors:
                raise CheckpointError(
                    f"{source}: tensor {key!r} is missing (needed for {m.name}); the checkpoint "
                    f"does not match its config.json ({config.family}, {config.num_layers} layers)"
                )
            arr = tensors[key]
            arr = arr.T if m.transpose and arr.ndim == 2 else arr
            if tuple(arr.shape) != tuple(per_layer_shape):
                raise CheckpointError(
                    f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)} but "
                    f"config.json implies {_hf_shape(per_layer_shape, m.transpose)}"
                )
            slices.append(arr)
            used.add(key)
        host = np.stack(slices) if m.stacked else slices[0]
        host = np.asarray(host, dtype=jnp.dtype(dtype))
        sharding = shardings(m.name, shape) if shardings else None
        leaves.append(jax.device_put(host, sharding) if sharding else jnp.asarray(host))
    _warn_unused(tensors, used, family, source)
    treedef = jax.tree.structure(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return jax.tree.unflatten(treedef, leaves)


def _hf_shape(shape: tuple[int, ...], transpose: bool) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transpose and len(shape) == 2 else tuple(shape)


def _warn_unused(tensors: Mapping, used: set[str], family: Family, source: str) -> None:
    ignored = [re.compile(p) for p in family.ignored_hf_keys]
    extra = [k for k in tensors if k not in used and not any(p.match(k) for p in ignored)]
    extra = [k for k in extra if k != "lm_head.weight"]  # tied checkpoints sometimes keep it
    if extra:
        warnings.warn(
            f"{source}: {len(extra)} tensors were not used, e.g. {extra[:3]}", stacklevel=3
        )
