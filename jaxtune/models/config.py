"""The architecture of a decoder, as one flat, hashable record.

Every supported family (Llama, Mistral, Qwen2/3, Gemma 1/2/3, GPT-2, Phi-3) is the same decoder
with different switches. A family module (`jaxtune/models/families/*.py`) turns the checkpoint's
`config.json` into a `ModelConfig`; the decoder reads only this record.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Norm = Literal["rms", "layer"]
Activation = Literal["silu", "gelu_tanh", "gelu"]
LayerType = Literal["full", "sliding"]


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one kind of layer (Gemma 3 has one for local and one for global)."""

    theta: float = 10000.0
    kind: str = "default"  # default | linear | dynamic | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position: int = 8192  # llama3 and dynamic
    partial_rotary_factor: float = 1.0  # fraction of head_dim that rotates


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Switches of the shared decoder. Field names follow transformers where one exists."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 4096

    # Normalisation.
    norm: Norm = "rms"
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: x * (1 + w)
    sandwich_norms: bool = False  # Gemma 2/3: norms after attention and MLP as well
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm on q and k per head

    # Blocks.
    activation: Activation = "silu"
    gated_mlp: bool = True  # gate * up (Llama) or a plain up/down MLP (GPT-2)
    fused_qkv: bool = False  # Phi-3 qkv_proj, GPT-2 c_attn
    fused_gate_up: bool = False  # Phi-3 gate_up_proj
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    # Positions.
    learned_positions: bool = False  # GPT-2
    rope: RopeConfig = dataclasses.field(default_factory=RopeConfig)
    rope_local: RopeConfig | None = None  # Gemma 3 sliding layers

    # Attention.
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] = ()  # empty means all "full"
    attn_softcap: float | None = None
    query_scale: float | None = None  # None: 1/sqrt(head_dim)

    # Embeddings and head.
    tie_embeddings: bool = False
    embed_scale: bool = False  # Gemma: multiply embeddings by sqrt(hidden_size)
    final_softcap: float | None = None

    # Tokens.
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    # The checkpoint's config.json, kept to write it back on export (hashable as a tuple).
    hf_config_items: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), compare=False)

    @property
    def hf_config(self) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.hf_config_items}

    @property
    def layer_kinds(self) -> tuple[LayerType, ...]:
        return self.layer_types or ("full",) * self.num_layers

    @property
    def has_sliding_layers(self) -> bool:
        return self.sliding_window is not None and "sliding" in self.layer_kinds

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def freeze_dict(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A dict as nested tuples, so that it can sit in a hashable config."""

    def freeze(v: Any) -> Any:
        if isinstance(v, dict):
            return ("__dict__", tuple((k, freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return ("__list__", tuple(freeze(x) for x in v))
        return v

    return tuple((k, freeze(v)) for k, v in d.items())


def thaw(v: Any) -> Any:
    """Inverse of `freeze_dict` for one value."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [thaw(x) for x in v[1]]
    return v
