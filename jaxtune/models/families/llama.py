"""Llama 2/3.x, Mistral, Qwen2 and Qwen3: the reference decoder and its small variations."""

from __future__ import annotations

from jaxtune.models.config import ModelConfig
from jaxtune.models.families.base import (
    LLAMA_WEIGHTS,
    Family,
    HFConfig,
    common_fields,
    sliding_fields,
)


def llama_config(hf: HFConfig) -> ModelConfig:
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        family="llama",
        **common_fields(hf),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def mistral_config(hf: HFConfig) -> ModelConfig:
    fields = common_fields(hf)
    return ModelConfig(family="mistral", **fields, **sliding_fields(hf, fields["num_layers"]))


def qwen2_config(hf: HFConfig) -> ModelConfig:
    fields = common_fields(hf)
    return ModelConfig(
        family="qwen2", **fields, **sliding_fields(hf, fields["num_layers"]), qkv_bias=True
    )


def qwen3_config(hf: HFConfig) -> ModelConfig:
    fields = common_fields(hf)
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        family="qwen3",
        **fields,
        **sliding_fields(hf, fields["num_layers"]),
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
    )


LLAMA = Family("llama", "LlamaForCausalLM", llama_config, LLAMA_WEIGHTS)
MISTRAL = Family("mistral", "MistralForCausalLM", mistral_config, LLAMA_WEIGHTS)
QWEN2 = Family("qwen2", "Qwen2ForCausalLM", qwen2_config, LLAMA_WEIGHTS)
QWEN3 = Family("qwen3", "Qwen3ForCausalLM", qwen3_config, LLAMA_WEIGHTS)
