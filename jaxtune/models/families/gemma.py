"""Gemma 1, 2 and 3 (text): (1 + w) RMSNorm, sqrt(d)-scaled embeddings, GeGLU, soft-capping,
sandwich norms (2/3), alternating local/global layers (2/3), q/k norm and a local rope (3)."""

from __future__ import annotations

from jaxtune.models.config import ModelConfig
from jaxtune.models.families.base import (
    LLAMA_WEIGHTS,
    Family,
    HFConfig,
    common_fields,
    layer_types_from_hf,
    rope_from_hf,
)


def _gemma_fields(hf: HFConfig) -> dict:
    fields = common_fields({**hf, "tie_word_embeddings": hf.get("tie_word_embeddings", True)})
    return {**fields, "norm_plus_one": True, "embed_scale": True}


def gemma_config(hf: HFConfig) -> ModelConfig:
    return ModelConfig(family="gemma", **_gemma_fields(hf))


def _sliding(hf: HFConfig, num_layers: int) -> dict:
    kinds = layer_types_from_hf(hf, num_layers)
    window = hf.get("sliding_window")
    if not window or "sliding" not in kinds:
        return {"sliding_window": None, "layer_types": ()}
    return {"sliding_window": int(window), "layer_types": kinds}


def gemma2_config(hf: HFConfig) -> ModelConfig:
    fields = _gemma_fields(hf)
    return ModelConfig(
        family="gemma2",
        **fields,
        **_sliding(hf, fields["num_layers"]),
        sandwich_norms=True,
        attn_softcap=hf.get("attn_logit_softcapping"),
        final_softcap=hf.get("final_logit_softcapping"),
        query_scale=hf.get("query_pre_attn_scalar"),
    )


def gemma3_config(hf: HFConfig) -> ModelConfig:
    fields = _gemma_fields(hf)
    fields["rope"] = rope_from_hf(hf, "full_attention")
    local = rope_from_hf(hf, "sliding_attention")
    if "rope_local_base_freq" in hf:  # transformers 4.x spelling
        local = local.__class__(theta=float(hf["rope_local_base_freq"]))
    return ModelConfig(
        family="gemma3",
        **fields,
        **_sliding(hf, fields["num_layers"]),
        rope_local=local,
        sandwich_norms=True,
        qk_norm=True,
        attn_softcap=hf.get("attn_logit_softcapping"),
        final_softcap=hf.get("final_logit_softcapping"),
        query_scale=hf.get("query_pre_attn_scalar"),
    )


GEMMA = Family("gemma", "GemmaForCausalLM", gemma_config, LLAMA_WEIGHTS)
GEMMA2 = Family("gemma2", "Gemma2ForCausalLM", gemma2_config, LLAMA_WEIGHTS)
GEMMA3 = Family("gemma3_text", "Gemma3ForCausalLM", gemma3_config, LLAMA_WEIGHTS)
