"""GGUF loading: tiny GGUF files written here (every tensor type, llama/qwen2/qwen3/gemma) and
the real SmolLM2-135M-Instruct Q4_1 file, against transformers' own GGUF loader."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

import jaxtune.models as jm
from jaxtune.errors import CheckpointError
from jaxtune.hub.smollm2 import smollm2_path
from jaxtune.models.families import family_for
from jaxtune.models.gguf import llama3_rope_factors, unpermute_rope
from jaxtune.models.safetensors_io import SafetensorsFile
from jaxtune.models.weight_map import to_hf_state

TOL = 1e-4  # tiny models, fp32 logits, max |diff|: the parity tolerance of every family
Q = gguf.GGMLQuantizationType
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a tiny writer
def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (the inverse of unpermute_rope)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


GGUF_NAMES = {  # HF module -> GGUF module, as in gguf-py's tensor map
    "embed_tokens": "token_embd",
    "norm": "output_norm",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf: str) -> str:
    if hf == "lm_head.weight":
        return "output.weight"
    module, leaf = hf.removeprefix("model.").rsplit(".", 1)
    if module.startswith("layers."):
        _, i, rest = module.split(".", 2)
        return f"blk.{i}.{GGUF_NAMES[rest]}.{leaf}"
    return f"{GGUF_NAMES[module]}.{leaf}"


def write_gguf(hf_dir: str, out: Path, arch: str, qtype=Q.F32, rope_freqs=None) -> Path:
    """Convert a tiny HF checkpoint to GGUF the way llama.cpp's convert_hf_to_gguf.py does."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(out, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, arr in SafetensorsFile(Path(hf_dir) / "model.safetensors").items():
        arr = np.asarray(arr, np.float32)
        if arch == "llama" and ".q_proj." in name:
            arr = _permute(arr, heads)
        elif arch == "llama" and ".k_proj." in name:
            arr = _permute(arr, kv)
        elif arch == "gemma" and name.endswith("norm.weight"):
            arr = arr + 1.0
        if arr.ndim == 2 and qtype != Q.F32:
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name), arr)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def hf_gguf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def hf_logits(directory: str, ids: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def ours(path, ids) -> np.ndarray:
    model, params = jm.load(path)
    return np.asarray(model.apply(params, ids))


IDS = np.random.default_rng(0).integers(0, 128, size=(2, 9))


# ----------------------------------------------------------------------------- tiny files
def test_unpermute_matches_transformers():
    """Our inverse of llama.cpp's q/k permutation == transformers' (weights and biases)."""
    rng = np.random.default_rng(0)
    proc = LlamaTensorProcessor()
    for heads, kv, head_dim in [(9, 3, 64), (4, 2, 16), (8, 8, 32)]:
        for cols in [(40,), ()]:
            q = rng.standard_normal((heads * head_dim, *cols)).astype(np.float32)
            k = rng.standard_normal((kv * head_dim, *cols)).astype(np.float32)
            expected_q = proc._reverse_permute_weights(q, heads, heads)
            np.testing.assert_array_equal(unpermute_rope(q, heads), expected_q)
            expected_k = proc._reverse_permute_weights(k, heads, kv)
            np.testing.assert_array_equal(unpermute_rope(k, kv), expected_k)
            assert not np.array_equal(expected_k, k)  # the permutation is not the identity
            np.testing.assert_array_equal(unpermute_rope(_permute(k, kv), kv), k)  # inverse


@pytest.mark.parametrize(
    "qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name
)
def test_llama_gguf_types_match_transformers(tiny_checkpoint, tmp_path, qtype):
    path = write_gguf(
        tiny_checkpoint("llama"), tmp_path / f"llama-{qtype.name}.gguf", "llama", qtype
    )
    np.testing.assert_allclose(ours(path, IDS), hf_gguf_logits(path, IDS), atol=TOL, rtol=0)


@pytest.mark.parametrize("name,arch", [("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")])
def test_f32_gguf_equals_original_checkpoint(tiny_checkpoint, tmp_path, name, arch):
    """Unquantized GGUF == the safetensors it came from (and == transformers' GGUF reading)."""
    directory = tiny_checkpoint(name)
    path = write_gguf(directory, tmp_path / f"{name}.gguf", arch)
    got = ours(path, IDS)
    np.testing.assert_allclose(got, hf_logits(directory, IDS), atol=TOL, rtol=0)
    if arch != "qwen3":  # transformers 5.24 ignores qwen3.attention.key_length (head_dim)
        np.testing.assert_allclose(got, hf_gguf_logits(path, IDS), atol=TOL, rtol=0)
    config = jm.load_config(path)
    assert config.tie_embeddings == (name == "qwen2")


def test_gemma_gguf_norms_are_shifted_back(tiny_checkpoint, tmp_path):
    """llama.cpp stores Gemma norms as 1 + w (transformers cannot read Gemma 1 GGUF: we compare
    against the original checkpoint)."""
    directory = tiny_checkpoint("gemma")
    path = write_gguf(directory, tmp_path / "gemma.gguf", "gemma", Q.F32)
    np.testing.assert_allclose(ours(path, IDS), hf_logits(directory, IDS), atol=TOL, rtol=0)


def test_llama3_rope_freqs_become_llama3_scaling(tmp_path):
    """Llama 3.x GGUFs carry the rope as a `rope_freqs` tensor; we rebuild `rope_scaling`."""
    from transformers import AutoConfig

    rope = dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=rope,
    )
    config = AutoConfig.for_model("llama", **kwargs)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    factors = llama3_rope_factors(16, 500000.0, 8.0, 1.0, 4.0, 8192)
    assert 1.0 < factors[4] < 8.0  # one frequency in the smoothed band: the test can fail
    path = write_gguf(str(tmp_path / "hf"), tmp_path / "l3.gguf", "llama", rope_freqs=factors)
    model, params = jm.load(path)
    assert model.config.rope.kind == "llama3" and model.config.rope.factor == 8.0
    positions = np.arange(9)[None] * 1000  # far positions, where the scaling matters
    got = np.asarray(model.apply(params, IDS[:1], positions=positions))
    ref_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        ref = ref_model(torch.tensor(IDS[:1]), position_ids=torch.tensor(positions)).logits
    np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)

    bad = factors.copy()
    bad[4] *= 1.5
    path = write_gguf(str(tmp_path / "hf"), tmp_path / "bad.gguf", "llama", rope_freqs=bad)
    with pytest.raises(CheckpointError, match="rope_freqs"):
        jm.load(path)


def test_gguf_errors(tiny_checkpoint, tmp_path):
    directory = tiny_checkpoint("llama")
    path = write_gguf(directory, tmp_path / "k.gguf", "llama", Q.Q5_0)
    with pytest.raises(CheckpointError, match=r"Q5_0.*supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"):
        jm.load(path)
    w = gguf.GGUFWriter(tmp_path / "rwkv.gguf", "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match=r"'rwkv6' is not supported.*llama, qwen2"):
        jm.load(tmp_path / "rwkv.gguf")
    good = write_gguf(directory, tmp_path / "t.gguf", "llama")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.gguf: not a readable GGUF"):
        jm.load(truncated)


# ----------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smollm2():
    """(gguf path, our model, our params, transformers model) for SmolLM2-135M-Instruct Q4_1."""
    path = smollm2_path(os.environ.get("JAXTUNE_CACHE") or REPO / ".cache")
    model, params = jm.load(path)
    ref = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return path, model, params, ref


def test_smollm2_weights_equal_transformers_dequantization(smollm2):
    """Every tensor bit-identical to transformers' (same dequantization, rope un-permuted)."""
    _, model, params, ref = smollm2
    state = ref.state_dict()
    family = family_for("llama")
    names = set()
    for name, ours_arr in to_hf_state(family, params, model.config.num_layers):
        np.testing.assert_array_equal(ours_arr, state[name].numpy(), err_msg=name)
        names.add(name)
    assert names == set(state) - {"lm_head.weight"}  # tied: lm_head is the embedding
    assert model.config.tie_embeddings and model.config.num_layers == 30


# The weights are bit-identical (above), so what is left is fp32 summation order through 30
# layers; the logits reach |35|, and 5e-4 is 1.4e-5 of that (the tiny-model tolerance of 1e-4
# is for logits of order 1).
SMOLLM2_TOL = 5e-4


def test_smollm2_logits_and_greedy_match_transformers(smollm2):
    path, model, params, ref = smollm2
    tokenizer = jm.load_tokenizer(path)
    assert "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    prompt = list(encoded["input_ids"])
    assert prompt[:3] == [1, 9690, 198]  # <|im_start|>system\n
    new_tokens = 12
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref_logits = ref(ids).logits.numpy()
        expected = ref.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens
        )[0, len(prompt) :].tolist()

    # Greedy with full forward passes over a fixed buffer: one compile, causal attention makes
    # the padding after position t irrelevant to the logits at t.
    apply = jax.jit(model.apply)
    buffer = np.zeros((1, len(prompt) + new_tokens), np.int32)
    buffer[0, : len(prompt)] = prompt
    logits = np.asarray(apply(params, jnp.asarray(buffer)))
    diff = np.abs(logits[0, : len(prompt)] - ref_logits[0]).max()
    assert diff <= SMOLLM2_TOL, diff
    got = []
    for t in range(len(prompt), len(prompt) + new_tokens):
        token = int(logits[0, t - 1].argmax())
        got.append(token)
        if token in model.config.eos_token_ids or t + 1 == buffer.shape[1]:
            break
        buffer[0, t] = token
        logits = np.asarray(apply(params, jnp.asarray(buffer)))
    assert got == expected[: len(got)] and len(got) == len(expected), (got, expected)
    print(f"SmolLM2 max|diff| logits {diff:.2e}; answer: {tokenizer.decode(got)!r}")


def test_convert_script_gguf_to_safetensors(tiny_checkpoint, tmp_path):
    """scripts/convert_checkpoint.py gguf: transformers reads the output to the same logits."""
    convert = load_script("convert_checkpoint")
    path = write_gguf(tiny_checkpoint("qwen2"), tmp_path / "q.gguf", "qwen2", Q.Q8_0)
    assert convert.main(["gguf", str(path), str(tmp_path / "hf")]) == 0
    np.testing.assert_allclose(
        hf_logits(str(tmp_path / "hf"), IDS), hf_gguf_logits(path, IDS), atol=TOL, rtol=0
    )
    assert convert.main(["gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "x")]) == 1


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
