"""LoRA/DoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight     [r, in]
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight     [out, r]
    base_model.model.model.layers.{i}.self_attn.q_proj.lora_magnitude_vector   [out]  (DoRA)

Module names come from the family's weight table (`jaxtune.models.weight_map.leaf_mapping`), so
`PeftModel.from_pretrained(transformers_model, dir)` loads what `save_adapter` writes, and
`load_adapter` reads what PEFT's `save_pretrained` writes. GPT-2's Conv1D kernels are stored
[in, out] by transformers: the config then says `fan_in_fan_out: true` (lora_A/B keep PEFT's
layout either way). The scale is written as `lora_alpha = scale * r` (rsLoRA folded in).
"""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models.decoder import CausalLM
from jaxtune.models.families import Family, family_for
from jaxtune.models.safetensors_io import SafetensorsFile, write_safetensors
from jaxtune.models.weight_map import leaf_mapping
from jaxtune.peft.adapter import AdapterWeight
from jaxtune.peft.dora import DoraWeight
from jaxtune.peft.errors import AdapterFileError
from jaxtune.peft.lora import LoraWeight
from jaxtune.peft.select import is_kernel, leaves_with_paths, map_selected
from jaxtune.peft.weight import AdapterLeaf, materialize

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
SUFFIXES = {
    ".lora_A.weight": "lora_a",
    ".lora_B.weight": "lora_b",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",  # older PEFT
}
UNSUPPORTED_OPTIONS = (
    "lora_bias",
    "target_parameters",
    "layer_replication",
    "modules_to_save",
    "trainable_token_indices",
    "use_qalora",
    "alora_invocation_tokens",
)


def _family(model: CausalLM) -> Family:
    cfg = model.config
    return family_for(cfg.hf_config.get("model_type", cfg.family))


def _module_table(model: CausalLM, params: Any) -> dict[str, tuple[str, int | None, bool]]:
    """HF module name -> (kernel path, layer index or None, transformers stores it [out, in])."""
    family, n = _family(model), model.config.num_layers
    table = {}
    for path, leaf in leaves_with_paths(params):
        if not is_kernel(path, leaf):
            continue
        m = leaf_mapping(family, tuple(path.split("/")), n)
        for i, key in enumerate(m.hf_keys):
            table[key.removesuffix(".weight")] = (path, i if m.stacked else None, m.transpose)
    return table


# ---------------------------------------------------------------------------------------- save
def save_adapter(
    directory: str | Path,
    model: CausalLM,
    params: Any,
    *,
    base_model_name_or_path: str | None = None,
    dtype: Any = None,
) -> Path:
    """Write the LoRA/DoRA leaves of `params` as a PEFT adapter directory."""
    directory = Path(directory)
    table = _module_table(model, params)
    by_path = collections.defaultdict(list)
    for module, (path, layer, transpose) in table.items():
        by_path[path].append((module, layer, transpose))
    leaves = {p: x for p, x in leaves_with_paths(params) if isinstance(x, AdapterLeaf)}
    _check_savable(leaves)
    kinds = {type(x) for x in leaves.values()}

    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    fan_in_fan_out = set()
    for path, leaf in leaves.items():
        host = {
            name: np.asarray(jax.device_get(getattr(leaf, name)))
            for name in ("lora_a", "lora_b", "magnitude")
            if hasattr(leaf, name)
        }
        if dtype is not None:
            host = {k: v.astype(jnp.dtype(dtype)) for k, v in host.items()}
        for module, layer, transpose in by_path[path]:
            fan_in_fan_out.add(not transpose)
            part = {k: v if layer is None else v[layer] for k, v in host.items()}
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(part["lora_a"].T)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(part["lora_b"].T)
            if "magnitude" in part:
                tensors[f"{PREFIX}{module}.lora_magnitude_vector"] = part["magnitude"]
            ranks[module] = leaf.rank
            alphas[module] = round(leaf.scale * leaf.rank, 9)
    if len(fan_in_fan_out) > 1:
        raise AdapterFileError(
            "cannot write one PEFT adapter over both Conv1D ([in, out]) and Linear kernels"
        )

    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    first = next(iter(leaves.values()))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": first.dropout,
        "target_modules": _target_modules(set(ranks), set(table)),
        "use_dora": DoraWeight in kinds,
        "use_rslora": False,
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {m: r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {m: a for m, a in alphas.items() if a != alpha},
        "modules_to_save": None,
    }
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _check_savable(leaves: dict[str, AdapterLeaf]) -> None:
    if not leaves:
        raise AdapterFileError("params hold no LoRA/DoRA leaves to save (apply peft.lora first)")
    for path, leaf in leaves.items():
        if isinstance(leaf, AdapterWeight):
            raise AdapterFileError(
                f"{path}: Houlsby adapters have no PEFT format; save the params with a checkpoint"
            )
        if isinstance(leaf, LoraWeight) and leaf.residual_base:
            raise AdapterFileError(
                f"{path}: a PiSSA adapter only fits the residual base; convert it with "
                "peft.pissa_to_lora(trained, initial) before save_adapter"
            )
    if len({type(x) for x in leaves.values()}) > 1:
        raise AdapterFileError("a PEFT adapter is all LoRA or all DoRA; these params mix both")


def _target_modules(adapted: set[str], all_modules: set[str]) -> list[str]:
    """Short names (["q_proj", "v_proj"]) when they select exactly the adapted modules, else
    the full module names."""
    short = {m.rsplit(".", 1)[-1] for m in adapted}
    if {m for m in all_modules if m.rsplit(".", 1)[-1] in short} == adapted:
        return sorted(short)
    return sorted(adapted)


# ---------------------------------------------------------------------------------------- load
def load_adapter(
    directory: str | Path, model: CausalLM, params: Any, *, dtype: Any = jnp.float32
) -> Any:
    """Params with the kernels named in a PEFT LoRA/DoRA adapter wrapped in adapter leaves.

    Layers absent from the file get a zero adapter (PEFT's `layers_to_transform`)."""
    directory = Path(directory)
    config = _read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterFileError(f"{weights_path}: not found (only safetensors adapters are read)")
    file = SafetensorsFile(weights_path)
    table = _module_table(model, params)
    current = dict(leaves_with_paths(params))
    found: dict[str, dict[int | None, dict[str, np.ndarray]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict)
    )
    for key in file:
        module, field = _parse_key(weights_path, key, table)
        path, layer, _ = table[module]
        found[path][layer][field] = (key, module, file[key])

    use_dora = bool(config.get("use_dora", False))
    new = {}
    for path, layers in found.items():
        base = current[path].base if isinstance(current[path], AdapterLeaf) else current[path]
        new[path] = _assemble(weights_path, config, path, base, layers, use_dora, dtype)
    return map_selected(params, list(new), lambda path, _: new[path])


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise AdapterFileError(f"{path}: not found; is {directory} a PEFT adapter directory?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFileError(f"{path}: not valid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(
            f"{path}: peft_type {config.get('peft_type')!r}; jaxtune reads LORA adapters "
            "(use_dora for DoRA)"
        )
    for option in UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise AdapterFileError(f"{path}: option {option}={config[option]!r} is not supported")
    return config


def _parse_key(
    file: Path, key: str, table: dict[str, tuple[str, int | None, bool]]
) -> tuple[str, str]:
    for suffix, field in SUFFIXES.items():
        if key.startswith(PREFIX) and key.endswith(suffix):
            module = key[len(PREFIX) : -len(suffix)]
            if module not in table:
                examples = ", ".join(sorted(table)[:4])
                raise AdapterFileError(
                    f"{file}: key {key!r} names module {module!r}, which this model does not "
                    f"have (its linear modules look like: {examples}, ...)"
                )
            return module, field
    raise AdapterFileError(
        f"{file}: key {key!r} is not a LoRA/DoRA tensor jaxtune reads (expected "
        f"'{PREFIX}<module>' + one of {sorted(SUFFIXES)})"
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup (`get_pattern_key`)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _assemble(
    file: Path,
    config: dict[str, Any],
    path: str,
    base: Any,
    layers: dict[int | None, dict[str, tuple[str, str, np.ndarray]]],
    use_dora: bool,
    dtype: Any,
) -> AdapterLeaf:
    """One (stacked) adapter leaf from per-layer tensors, shapes checked against the base."""
    w = materialize(base)
    *lead, n_in, n_out = w.shape
    needed = ("lora_a", "lora_b", "magnitude") if use_dora else ("lora_a", "lora_b")
    per_layer = {}
    for layer, fields in layers.items():
        some_key, module, _ = next(iter(fields.values()))
        for name in needed:
            if name not in fields:
                raise AdapterFileError(f"{file}: {some_key!r} has no matching {name} tensor")
        a, b = fields["lora_a"][2], fields["lora_b"][2]
        r = a.shape[0]
        expect = {"lora_a": (r, n_in), "lora_b": (n_out, r), "magnitude": (n_out,)}
        for name in needed:
            key, _, arr = fields[name]
            if tuple(arr.shape) != expect[name]:
                raise AdapterFileError(
                    f"{file}: {key!r} has shape {tuple(arr.shape)}, but the model's {path} "
                    f"needs {expect[name]} (r={r}, in={n_in}, out={n_out})"
                )
        want_r = _pattern_value(config.get("rank_pattern"), module, config.get("r", r))
        if want_r != r:
            raise AdapterFileError(f"{file}: {some_key!r} has rank {r}, config says r={want_r}")
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        per_layer[layer] = (a.T.astype(np.float32), b.T.astype(np.float32), s, fields)

    rank = max(v[0].shape[1] for v in per_layer.values())
    scale = next(iter(per_layer.values()))[2]
    a_out = np.zeros((*lead, n_in, rank), np.float32)
    b_out = np.zeros((*lead, rank, n_out), np.float32)
    for layer, (a, b, s, _) in per_layer.items():
        idx = () if layer is None else (layer,)
        r = a.shape[1]
        a_out[(*idx, slice(None), slice(0, r))] = a  # smaller ranks pad with zeros
        b_out[(*idx, slice(0, r), slice(None))] = b * (s / scale)  # per-layer scales fold into B
    a_out, b_out = jnp.asarray(a_out, dtype), jnp.asarray(b_out, dtype)
    dropout = float(config.get("lora_dropout", 0.0))
    if not use_dora:
        return LoraWeight(base=base, lora_a=a_out, lora_b=b_out, scale=scale, dropout=dropout)
    magnitude = np.array(jnp.linalg.norm(w.astype(jnp.float32), axis=-2))  # absent layers
    for layer, (_, _, _, fields) in per_layer.items():
        magnitude[() if layer is None else layer] = fields["magnitude"][2]
    return DoraWeight(
        base=base,
        lora_a=a_out,
        lora_b=b_out,
        magnitude=jnp.asarray(magnitude, dtype),
        scale=scale,
        dropout=dropout,
    )
