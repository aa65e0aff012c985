"""What every family module declares, and the config fields they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxtune.errors import CheckpointError
from jaxtune.models.config import ModelConfig, RopeConfig, freeze_dict

HFConfig = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """Decoder module path (regex, `/`-separated) -> HF module name (`{i}` is the layer index).

    Leaf names map as kernel->weight (transposed unless `transpose=False`, e.g. GPT-2's Conv1D),
    scale->weight, bias->bias, embedding->weight.
    """

    ours: str
    hf: str
    transpose: bool = True


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the transformers class written into config.json on export
    config_from_hf: Callable[[HFConfig], ModelConfig]
    weights: tuple[WeightRule, ...]
    ignored_hf_keys: tuple[str, ...] = (r".*rotary_emb\.inv_freq$",)  # regexes of buffers to skip
    optional_prefix: str = (
        ""  # some checkpoints omit it (GPT-2 on the hub: "h.0..." for "transformer.h.0...")
    )


def rope_from_hf(hf: HFConfig, layer_type: str | None = None) -> RopeConfig:
    """Read `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x)."""
    params = hf.get("rope_parameters") or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    scaling = hf.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    return RopeConfig(
        theta=float(theta),
        kind=kind,
        factor=float(merged.get("factor", 1.0) or 1.0),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position=int(
            merged.get("original_max_position_embeddings")
            or hf.get("original_max_position_embeddings")
            or hf.get("max_position_embeddings", 8192)
        ),
        partial_rotary_factor=float(
            merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        ),
    )


def eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (int(value),)


def layer_types_from_hf(hf: HFConfig, num_layers: int) -> tuple[str, ...]:
    """`layer_types` as ("full" | "sliding", ...); empty when the config has none."""
    names = hf.get("layer_types")
    if not names:
        return ()
    kinds = tuple("sliding" if "sliding" in n else "full" for n in names)
    if len(kinds) != num_layers:
        raise CheckpointError(
            f"config.json: layer_types has {len(kinds)} entries but num_hidden_layers is "
            f"{num_layers}"
        )
    return kinds


ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}


def activation_from_hf(name: str) -> str:
    if name not in ACTIVATIONS:
        raise CheckpointError(
            f"config.json: activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def common_fields(hf: HFConfig) -> dict[str, Any]:
    """Fields named the same way by every Llama-like config."""
    hidden = hf["hidden_size"]
    heads = hf["num_attention_heads"]
    layers = hf["num_hidden_layers"]
    return dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hf["intermediate_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hidden // heads,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=activation_from_hf(hf.get("hidden_act") or hf.get("hidden_activation")),
        rope=rope_from_hf(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        hf_config_items=freeze_dict(hf),
    )


def sliding_fields(hf: HFConfig, num_layers: int) -> dict[str, Any]:
    """sliding_window and layer_types: without `layer_types` a window applies to every layer
    (Mistral, Phi-3); with them, to the layers they name (Qwen2/3, Gemma 2/3)."""
    window = hf.get("sliding_window")
    if hf.get("use_sliding_window") is False:
        window = None
    kinds = layer_types_from_hf(hf, num_layers) or ("sliding",) * num_layers
    if window is None or "sliding" not in kinds:
        return {"sliding_window": None, "layer_types": ()}
    return {"sliding_window": int(window), "layer_types": kinds}


LLAMA_WEIGHTS = (
    WeightRule("embed_tokens", "model.embed_tokens"),
    WeightRule("layers/(.+)", r"model.layers.{i}.\1"),
    WeightRule("norm", "model.norm"),
    WeightRule("lm_head", "lm_head"),
)
