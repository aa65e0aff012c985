"""Tiny random transformers checkpoints, one per supported family and rope variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", dict(SMALL, rms_norm_eps=1e-5)),
    "llama_tied": ("llama", dict(SMALL, tie_word_embeddings=True)),
    "llama3_rope": (
        "llama",
        dict(
            SMALL,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "llama_linear_rope": (
        "llama",
        dict(SMALL, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    ),
    "llama_dynamic_rope": (
        "llama",
        dict(
            SMALL,
            max_position_embeddings=8,
            rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
        ),
    ),
    "llama_bias": ("llama", dict(SMALL, attention_bias=True, mlp_bias=True)),
    "mistral": ("mistral", dict(SMALL, sliding_window=5, head_dim=16)),
    "qwen2": ("qwen2", dict(SMALL, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(SMALL, head_dim=32)),
    "gemma": ("gemma", dict(SMALL, head_dim=16, hidden_act="gelu_pytorch_tanh")),
    "gemma2": (
        "gemma2",
        dict(
            SMALL,
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "gemma3_text",
        dict(
            SMALL,
            num_hidden_layers=3,
            head_dim=16,
            sliding_window=5,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            query_pre_attn_scalar=24,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
            },
        ),
    ),
    "gpt2": ("gpt2", dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    "phi3": ("phi3", dict(SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def hf_config(name: str):
    from transformers import AutoConfig

    model_type, kwargs = TINY_CONFIGS[name]
    return AutoConfig.for_model(model_type, **kwargs)


def make_hf_checkpoint(name: str, directory: str | Path, seed: int = 0):
    """Build a random tiny model with transformers, save it, return the torch model (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = hf_config(name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms away from their init so that a wrong norm shows in logits
        for n, p in model.named_parameters():
            if "norm" in n or "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model
