"""Phi-3: Llama with fused `qkv_proj` and `gate_up_proj`."""

from __future__ import annotations

from jaxtune.models.config import ModelConfig
from jaxtune.models.families.base import (
    LLAMA_WEIGHTS,
    Family,
    HFConfig,
    common_fields,
    sliding_fields,
)


def phi3_config(hf: HFConfig) -> ModelConfig:
    fields = common_fields(hf)
    return ModelConfig(
        family="phi3",
        **fields,
        **sliding_fields(hf, fields["num_layers"]),
        fused_qkv=True,
        fused_gate_up=True,
    )


PHI3 = Family("phi3", "Phi3ForCausalLM", phi3_config, LLAMA_WEIGHTS)
