"""GGUF files (llama.cpp) read as a Hugging Face `config.json` dict plus HF-named tensors.

`read_gguf(path) -> (hf_config, tensors)`: `tensors` is a lazy mapping; each tensor is
dequantized (`gguf.quants.dequantize`, the same code transformers uses) only when it is read, so
memory holds one tensor at a time on top of the memory-mapped file. llama.cpp's conversion
changes two things that are undone here, exactly as transformers' GGUF loader does:
- `llama` files store q/k projections with rows permuted for its interleaved rope
  (`unpermute_rope`);
- `gemma` files store RMSNorm weights as `1 + w`.

Supported: architectures `llama` (also Mistral, which llama.cpp writes as llama), `qwen2`,
`qwen3`, `gemma`; tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.errors import CheckpointError

# GGUF architecture -> transformers model_type.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma"}
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# GGUF module name -> HF module name; `{i}` is the block index. Leaf suffixes (.weight/.bias)
# are kept as they are.
TENSOR_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.attn_q_norm": "model.layers.{i}.self_attn.q_norm",
    "blk.{i}.attn_k_norm": "model.layers.{i}.self_attn.k_norm",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x rope scaling, folded into the config
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None if unknown)."""
    module, _, leaf = gguf_name.rpartition(".")
    index = None
    if m := _BLOCK.fullmatch(module):
        index, module = m.group(1), "blk.{i}." + m.group(2)
    hf = TENSOR_NAMES.get(module)
    if hf is None:
        return None
    return f"{hf.format(i=index)}.{leaf}"


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rows [H, 2, d/2] <- [H, d/2, 2]); any trailing dims."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- reading
def read_gguf(path: str | Path) -> tuple[dict[str, Any], Mapping[str, np.ndarray]]:
    """(HF config dict, lazy HF name -> float32 array mapping) of a GGUF file."""
    reader = _open(Path(path))
    hf_config = _hf_config(reader, Path(path))
    return hf_config, GGUFTensors(reader, Path(path), hf_config)


def read_gguf_config(path: str | Path) -> dict[str, Any]:
    """Only the HF config dict of a GGUF file (tensors are not read)."""
    return _hf_config(_open(Path(path)), Path(path))


def _open(path: Path):
    import gguf

    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # bad magic, truncated file, unknown version ...
        raise CheckpointError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e}). The file may be "
            "truncated or corrupt; download it again."
        ) from None


class GGUFTensors(Mapping[str, np.ndarray]):
    """HF tensor name -> dequantized float32 array, read from the GGUF file on access.

    Tensors whose GGUF name has no HF counterpart keep their GGUF name (so that the loader can
    report them as unused).
    """

    def __init__(self, reader: Any, path: Path, hf_config: dict[str, Any]):
        self.path = path
        self.arch = reader.fields["general.architecture"].contents()
        self.n_heads = hf_config["num_attention_heads"]
        self.n_kv_heads = hf_config["num_key_value_heads"]
        self._tensors = {}
        for t in reader.tensors:
            if t.name == ROPE_FREQS:
                continue
            name = hf_name(t.name) or t.name
            if t.tensor_type.name not in SUPPORTED_TYPES and name != t.name:
                raise CheckpointError(
                    f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which jaxtune "
                    f"does not read (supported: {', '.join(SUPPORTED_TYPES)}). Use a GGUF with "
                    "one of those types, or the original safetensors checkpoint."
                )
            self._tensors[name] = t

    def __getitem__(self, name: str) -> np.ndarray:
        from gguf import quants

        t = self._tensors[name]
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # ggml shapes are innermost-first
        if self.arch == "llama" and ".self_attn.q_proj." in name:
            w = unpermute_rope(w, self.n_heads)
        elif self.arch == "llama" and ".self_attn.k_proj." in name:
            w = unpermute_rope(w, self.n_kv_heads)
        elif self.arch == "gemma" and name.endswith("norm.weight"):
            w = w - 1.0
        return w

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


# ----------------------------------------------------------------------------- config
def _hf_config(reader: Any, path: Path) -> dict[str, Any]:
    """A transformers `config.json` dict from the GGUF metadata."""

    def get(key: str, default: Any = None) -> Any:
        return _field(reader, key, default)

    arch = get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: GGUF architecture {arch!r} is not supported by jaxtune. Supported GGUF "
            f"architectures: {', '.join(ARCHITECTURES)} (Mistral files are 'llama'). Load the "
            "original safetensors checkpoint instead."
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: GGUF file has no 'token_embd.weight' tensor")

    def need(key: str) -> Any:
        value = get(f"{arch}.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata '{arch}.{key}' is missing")
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise CheckpointError(
                    f"{path}: GGUF metadata '{arch}.{key}' varies per layer ({value}); jaxtune "
                    "supports only uniform layers"
                )
            value = value[0]
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    kv_heads = int(get(f"{arch}.attention.head_count_kv") or heads)
    head_dim = get(f"{arch}.attention.key_length") or get(f"{arch}.rope.dimension_count")
    vocab_size = int(tensors["token_embd.weight"].shape[1])  # ggml shape: [hidden, vocab]
    bias = "blk.0.attn_q.bias" in tensors
    hf: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(head_dim) if head_dim else hidden // heads,
        "max_position_embeddings": int(get(f"{arch}.context_length", 4096)),
        "rms_norm_eps": float(get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get(f"{arch}.rope.freq_base", 10000.0)),
        "hidden_act": "gelu_pytorch_tanh" if arch == "gemma" else "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": bias,
        "torch_dtype": "float32",
    }
    for key in ("bos", "eos", "padding"):
        token = get(f"tokenizer.ggml.{key}_token_id")
        if token is not None:
            hf[f"{'pad' if key == 'padding' else key}_token_id"] = int(token)
    rope_scaling = _rope_scaling(reader, arch, hf, path)
    if rope_scaling:
        hf["rope_scaling"] = rope_scaling
    return hf


def _field(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value (str, number, list), or `default` when the key is absent."""
    return reader.fields[key].contents() if key in reader.fields else default


def _rope_scaling(reader: Any, arch: str, hf: dict[str, Any], path: Path) -> dict | None:
    """`rope_scaling` from `{arch}.rope.scaling.*` metadata or a Llama 3 `rope_freqs` tensor."""
    kind = _field(reader, f"{arch}.rope.scaling.type")
    freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if freqs is not None:
        return _llama3_scaling(np.asarray(freqs.data, np.float32), hf, path)
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {
            "rope_type": "linear",
            "factor": float(_field(reader, f"{arch}.rope.scaling.factor")),
        }
    raise CheckpointError(
        f"{path}: GGUF rope scaling {kind!r} is not supported (supported: linear, and Llama 3 "
        "rope_freqs). Load the original safetensors checkpoint instead."
    )


def llama3_rope_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs` for a Llama 3 rope."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))
    return out.astype(np.float32)


def _llama3_scaling(stored: np.ndarray, hf: dict[str, Any], path: Path) -> dict:
    """Llama 3.x GGUFs keep only the factors; accept them when Meta's parameters reproduce them."""
    params = {
        "factor": float(stored.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    expected = llama3_rope_factors(
        hf["head_dim"],
        hf["rope_theta"],
        params["factor"],
        params["low_freq_factor"],
        params["high_freq_factor"],
        params["original_max_position_embeddings"],
    )
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-5, atol=0):
        raise CheckpointError(
            f"{path}: tensor {ROPE_FREQS!r} holds rope frequency factors that are not a Llama 3 "
            "rope with factor = max, low_freq_factor 1, high_freq_factor 4, original context "
            "8192; jaxtune cannot represent them. Load the original safetensors checkpoint."
        )
    return {"rope_type": "llama3", **params}
