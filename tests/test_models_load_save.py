"""Saving (transformers is the judge), sharded and bf16 checkpoints, hub ids, and the errors of
`jaxtune.models.load` / `save`, each asserting that its message names the problem."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
from pathlib import Path

import flax
import huggingface_hub
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import jaxtune.models as jm
from jaxtune.errors import CheckpointError
from jaxtune.models.load import HUB_PATTERNS
from jaxtune.models.safetensors_io import SafetensorsFile, write_safetensors

TOL = 1e-4  # fp32 logits, max |diff|, fixed
IDS = np.random.default_rng(0).integers(0, 128, size=(2, 10))


def hf_model(directory, dtype=torch.float32):
    """transformers' model, failing on any missing, unexpected or mismatched tensor."""
    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not problems and not info.get("error_msgs"), problems
    return model.eval()


def hf_logits(directory, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return hf_model(directory)(torch.tensor(ids)).logits.float().numpy()


def random_params(model, seed=0):
    """Params far from any init (norms and biases too), so that a misplaced tensor shows."""
    params = model.init(jax.random.key(seed), std=0.1)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2", "gpt2", "phi3", "gemma3"])
def test_save_then_transformers_gives_same_logits(tiny_checkpoint, tmp_path, name):
    """Random params of ours -> save -> transformers: logits equal ours."""
    model = jm.CausalLM(jm.load_config(tiny_checkpoint(name)))
    params = random_params(model)
    jm.save(tmp_path, model, params)
    ours = np.asarray(model.apply(params, IDS))
    np.testing.assert_allclose(ours, hf_logits(tmp_path), atol=TOL, rtol=0)
    names = set(SafetensorsFile(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not model.config.tie_embeddings)


def test_sharded_save_round_trips(tiny_checkpoint, tmp_path):
    model, params = jm.load(tiny_checkpoint("llama"))
    params = random_params(model, seed=3)
    jm.save(tmp_path, model, params, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert not (tmp_path / "model.safetensors").exists()
    assert all(p.stat().st_size < 40_000 + 30_000 for p in shards)  # one tensor may overflow

    model2, params2 = jm.load(tmp_path)
    assert model2.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    np.testing.assert_allclose(
        np.asarray(model.apply(params, IDS)), hf_logits(tmp_path), atol=TOL, rtol=0
    )


def test_bf16_save_and_load(tiny_checkpoint, tmp_path):
    model, params = jm.load(tiny_checkpoint("qwen2"))
    jm.save(tmp_path, model, params, dtype=jnp.bfloat16)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    stored = SafetensorsFile(tmp_path / "model.safetensors")
    assert {stored[k].dtype for k in stored} == {np.dtype(ml_dtypes.bfloat16)}

    _, loaded = jm.load(tmp_path, dtype=jnp.bfloat16)
    expected = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)  # bit-exact
    ref = hf_model(tmp_path, dtype=torch.bfloat16).state_dict()
    w = ref["model.layers.1.self_attn.q_proj.weight"].float().numpy()
    ours = np.asarray(loaded["layers"]["self_attn"]["q_proj"]["kernel"][1], np.float32).T
    np.testing.assert_array_equal(ours, w)


def test_loads_sharded_checkpoint_written_by_transformers(tiny_checkpoint, tmp_path):
    hf_model(tiny_checkpoint("llama")).save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 3
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, params = jm.load(tmp_path)
    got = np.asarray(model.apply(params, IDS))
    np.testing.assert_allclose(got, hf_logits(tiny_checkpoint("llama")), atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- errors
def copy_checkpoint(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_tensors(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = {k: np.array(v) for k, v in SafetensorsFile(path).items()}
    edit(tensors)
    write_safetensors(path, tensors, {"format": "pt"})


def test_missing_path():
    with pytest.raises(CheckpointError, match=r"/no/such/dir: no such file or directory"):
        jm.load("/no/such/dir")


def test_missing_local_relative_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", pytest.fail)
    with pytest.raises(CheckpointError, match=r"runs/ckpt1: no such file or directory"):
        jm.load("runs/ckpt1")


def test_missing_config(tiny_checkpoint, tmp_path):
    directory = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "c")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"c/config\.json: missing"):
        jm.load(directory)


def test_unsupported_model_type_lists_supported(tiny_checkpoint, tmp_path):
    directory = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "c")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError) as e:
        jm.load(directory)
    assert "'bert' is not supported" in str(e.value)
    assert ", ".join(jm.supported_model_types()) in str(e.value)
    assert {"llama", "gpt2", "gemma2", "phi3"} <= set(jm.supported_model_types())


def test_shape_mismatch_names_the_tensor(tiny_checkpoint, tmp_path):
    directory = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "c")
    key = "model.layers.1.mlp.up_proj.weight"

    def shrink(t):
        t[key] = t[key][:50]

    rewrite_tensors(directory, shrink)
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(50, 64\).*\(96, 64\)"):
        jm.load(directory)


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    directory = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "c")
    key = "model.layers.1.self_attn.v_proj.weight"
    rewrite_tensors(directory, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is missing"):
        jm.load(directory)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tiny_checkpoint, tmp_path, damage):
    directory = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "c")
    path = directory / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
        pattern = r"model\.safetensors: tensor .* truncated or corrupt"
    else:
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
        pattern = r"model\.safetensors: corrupt safetensors header"
    with pytest.raises(CheckpointError, match=pattern):
        jm.load(directory)


class _Payload:
    """Unpickling this creates a directory: proof that a loader unpickled the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_checkpoint_is_refused_never_unpickled(tiny_checkpoint, tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    shutil.copy(Path(tiny_checkpoint("llama")) / "config.json", directory)
    marker = tmp_path / "unpickled"
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError) as e:
        jm.load(directory)
    message = str(e.value)
    assert "pytorch_model.bin" in message and "never unpickles" in message
    assert "safe_serialization=True" in message  # says how to convert
    assert not marker.exists()


@flax.struct.dataclass
class _LoraLike:
    base: jax.Array
    a: jax.Array

    def linear(self, x):
        return x @ self.base + (x @ self.a) @ self.a.T

    def materialize(self):
        return self.base


def test_save_refuses_non_array_leaves(tiny_checkpoint, tmp_path):
    model, params = jm.load(tiny_checkpoint("llama"))
    attn = params["layers"]["self_attn"]
    q = attn["q_proj"]["kernel"]
    adapted = {**params, "layers": {**params["layers"], "self_attn": {**attn}}}
    adapted["layers"]["self_attn"]["q_proj"] = {"kernel": _LoraLike(q, q[..., :2])}
    with pytest.raises(CheckpointError, match=r"'q_proj'\]\['kernel'\] is a _LoraLike.*merge"):
        jm.save(tmp_path / "a", model, adapted)
    broken = {**params, "norm": {"scale": "oops"}}
    with pytest.raises(CheckpointError, match=r"params\['norm'\]\['scale'\] is a str"):
        jm.save(tmp_path / "b", model, broken)
    wrong = {**params, "norm": {"scale": np.ones(3, np.float32)}}
    with pytest.raises(CheckpointError, match=r"\['norm'\]\['scale'\] has shape \(3,\)"):
        jm.save(tmp_path / "c", model, wrong)
    assert not (tmp_path / "a").exists()  # nothing half-written


# ----------------------------------------------------------------------------- hub ids
def test_hub_id_downloads_safetensors_only(tiny_checkpoint, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return tiny_checkpoint("llama")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, params = jm.load("some-org/some-model", revision="v1")
    (repo_id, revision, patterns), *_ = calls
    assert (repo_id, revision) == ("some-org/some-model", "v1")
    assert patterns == HUB_PATTERNS and "*.safetensors" in patterns and "config.json" in patterns
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt", ".gguf")) for p in patterns)
    np.testing.assert_allclose(
        np.asarray(model.apply(params, IDS)), hf_logits(tiny_checkpoint("llama")), atol=TOL
    )


def test_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    """The real huggingface_hub, offline, with an empty cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        jm.load("jaxtune-tests/no-such-model")
    message = str(e.value)
    assert message.startswith("jaxtune-tests/no-such-model: not a local path")
    assert "Hugging Face hub" in message and "pass a local directory" in message


def test_convert_script_pickle_needs_trust_and_converts(tiny_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", Path(__file__).parents[1] / "scripts" / "convert_checkpoint.py"
    )
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    src = tmp_path / "bin"
    src.mkdir()
    reference = hf_model(tiny_checkpoint("llama_tied"))
    torch.save(reference.state_dict(), src / "pytorch_model.bin")
    shutil.copy(Path(tiny_checkpoint("llama_tied")) / "config.json", src)
    with pytest.raises(SystemExit):  # argparse refuses without the flag
        convert.main(["pickle", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert convert.main(["pickle", str(src), str(tmp_path / "out"), "--trust-pickle"]) == 0
    model, params = jm.load(tmp_path / "out")
    with torch.no_grad():
        expected = reference(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.apply(params, IDS)), expected, atol=TOL, rtol=0)
