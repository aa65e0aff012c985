"""GPT-2: learned positions, LayerNorm, a plain GELU MLP, fused `c_attn` in Conv1D layout."""

from __future__ import annotations

from jaxtune.errors import CheckpointError
from jaxtune.models.config import ModelConfig, RopeConfig, freeze_dict
from jaxtune.models.families.base import Family, HFConfig, WeightRule, activation_from_hf, eos_ids


def gpt2_config(hf: HFConfig) -> ModelConfig:
    d, heads = hf["n_embd"], hf["n_head"]
    options = ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
    unsupported = [k for k in options if hf.get(k)]
    if hf.get("scale_attn_weights") is False:
        unsupported.append("scale_attn_weights=False")
    if unsupported:
        raise CheckpointError(f"config.json: GPT-2 options not supported by jaxtune: {unsupported}")
    return ModelConfig(
        family="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=d,
        intermediate_size=hf.get("n_inner") or 4 * d,
        num_layers=hf["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d // heads,
        max_position_embeddings=hf.get("n_positions", 1024),
        norm="layer",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        gated_mlp=False,
        fused_qkv=True,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        learned_positions=True,
        rope=RopeConfig(),
        tie_embeddings=True,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        hf_config_items=freeze_dict(hf),
    )


GPT2_WEIGHTS = (
    WeightRule("embed_tokens", "transformer.wte"),
    WeightRule("embed_positions", "transformer.wpe"),
    WeightRule("layers/input_layernorm", "transformer.h.{i}.ln_1"),
    WeightRule("layers/post_attention_layernorm", "transformer.h.{i}.ln_2"),
    WeightRule("layers/self_attn/qkv_proj", "transformer.h.{i}.attn.c_attn", transpose=False),
    WeightRule("layers/self_attn/o_proj", "transformer.h.{i}.attn.c_proj", transpose=False),
    WeightRule("layers/mlp/up_proj", "transformer.h.{i}.mlp.c_fc", transpose=False),
    WeightRule("layers/mlp/down_proj", "transformer.h.{i}.mlp.c_proj", transpose=False),
    WeightRule("norm", "transformer.ln_f"),
)

GPT2 = Family(
    "gpt2",
    "GPT2LMHeadModel",
    gpt2_config,
    GPT2_WEIGHTS,
    ignored_hf_keys=(r".*attn\.(masked_)?bias$", r"^lm_head\.weight$"),
    optional_prefix="transformer.",
)
