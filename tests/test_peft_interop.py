"""LoRA/DoRA against the reference (PEFT): one layer, a tiny model's logits, and adapter files in
both directions. fp32 tolerances: 1e-5 on a layer, 1e-4 on logits (never loosened)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from jaxtune import models, peft
from jaxtune.models.layers import linear

LAYER_TOL = 1e-5
LOGITS_TOL = 1e-4
IDS = np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32)


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    directory = tiny_checkpoint("llama")
    model, params = models.load(directory)
    return directory, model, params


def hf_model(directory: str):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def hf_logits(m, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return to_np(m(input_ids=torch.tensor(ids, dtype=torch.long)).logits)


def randomize(params, seed: int):
    """Nonzero B and a perturbed magnitude, so that every adapter tensor shows in the output."""
    rng = np.random.RandomState(seed)

    def fill(x):
        if isinstance(x, peft.LoraWeight | peft.DoraWeight):
            b = jnp.asarray(0.1 * rng.standard_normal(x.lora_b.shape), x.lora_b.dtype)
            x = x.replace(lora_b=b)
            if isinstance(x, peft.DoraWeight):
                noise = 1 + 0.2 * rng.standard_normal(x.magnitude.shape)
                x = x.replace(magnitude=x.magnitude * jnp.asarray(noise, x.magnitude.dtype))
        return x

    return jax.tree.map(fill, params, is_leaf=lambda x: isinstance(x, peft.AdapterLeaf))


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("rslora", [False, True])
def test_single_layer_matches_peft(use_dora, rslora):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40))
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["0"],
        use_dora=use_dora,
        use_rslora=rslora,
        init_lora_weights=False,  # random B: a nonzero update
    )
    layer = get_peft_model(net, config).base_model.model[0]
    if use_dora:
        with torch.no_grad():
            layer.lora_magnitude_vector["default"].weight.mul_(1.3)
    x = torch.randn(3, 5, 24)
    out = layer(x)
    expected = to_np(out)
    (out**2).sum().backward()  # gradients too: PEFT detaches DoRA's norm, and so do we

    kw = dict(
        base=jnp.asarray(to_np(layer.base_layer.weight).T),
        lora_a=jnp.asarray(to_np(layer.lora_A["default"].weight).T),
        lora_b=jnp.asarray(to_np(layer.lora_B["default"].weight).T),
        scale=layer.scaling["default"],
    )
    assert kw["scale"] == (8 / 2 if rslora else 8 / 4)
    if use_dora:
        magnitude = to_np(layer.lora_magnitude_vector["default"].weight)
        leaf = peft.DoraWeight(magnitude=jnp.asarray(magnitude), **kw)
    else:
        leaf = peft.LoraWeight(**kw)
    bias = jnp.asarray(to_np(layer.base_layer.bias))
    got = linear(jnp.asarray(to_np(x)), leaf, bias)
    np.testing.assert_allclose(np.asarray(got), expected, atol=LAYER_TOL, rtol=0)

    grads = jax.grad(lambda w: jnp.sum(linear(jnp.asarray(to_np(x)), w, bias) ** 2))(leaf)
    pairs = [(grads.lora_a.T, layer.lora_A["default"].weight.grad)]
    pairs.append((grads.lora_b.T, layer.lora_B["default"].weight.grad))
    if use_dora:
        pairs.append((grads.magnitude, layer.lora_magnitude_vector["default"].weight.grad))
    for ours, theirs in pairs:
        scale = np.abs(to_np(theirs)).max()
        np.testing.assert_allclose(np.asarray(ours) / scale, to_np(theirs) / scale, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_our_adapter_file_loads_in_peft(llama, tmp_path, method):
    directory, model, params = llama
    transform = peft.lora if method == "lora" else peft.dora
    adapted = transform(params, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8, rng=KEY)
    adapted = randomize(adapted, 1)
    peft.save_adapter(tmp_path, model, adapted)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert config["use_dora"] is (method == "dora")
    reference = PeftModel.from_pretrained(hf_model(directory), tmp_path).eval()
    ours = np.asarray(model.apply(adapted, IDS))
    np.testing.assert_allclose(ours, hf_logits(reference, IDS), atol=LOGITS_TOL, rtol=0)
    base = np.asarray(model.apply(params, IDS))
    assert np.abs(ours - base).max() > 100 * LOGITS_TOL  # the adapter does change the logits
    merged = np.asarray(model.apply(peft.merge(adapted), IDS))
    np.testing.assert_allclose(merged, ours, atol=LOGITS_TOL, rtol=0)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_peft_adapter_file_loads_here(llama, tmp_path, method):
    directory, model, params = llama
    torch.manual_seed(3)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["k_proj", "o_proj", "gate_proj"],
        use_dora=method == "dora",
        init_lora_weights=False,
        layers_to_transform=[1],  # layer 0 absent from the file: a zero adapter here
    )
    reference = get_peft_model(hf_model(directory), config).eval()
    if method == "dora":
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1.2)
    reference.save_pretrained(tmp_path)

    adapted = peft.load_adapter(tmp_path, model, params)
    kind = peft.DoraWeight if method == "dora" else peft.LoraWeight
    assert isinstance(adapted["layers"]["self_attn"]["k_proj"]["kernel"], kind)
    assert not isinstance(adapted["layers"]["self_attn"]["q_proj"]["kernel"], peft.AdapterLeaf)
    ours = np.asarray(model.apply(adapted, IDS))
    np.testing.assert_allclose(ours, hf_logits(reference, IDS), atol=LOGITS_TOL, rtol=0)


def test_gpt2_conv1d_adapter_round_trip(tiny_checkpoint, tmp_path):
    """GPT-2 keeps Conv1D kernels [in, out] (PEFT's fan_in_fan_out); attn.c_proj and mlp.c_proj
    share a short name, so adapting only o_proj must name modules in full."""
    directory = tiny_checkpoint("gpt2")
    model, params = models.load(directory)
    adapted = randomize(peft.lora(params, ["qkv_proj", "o_proj"], rank=4, rng=KEY), 2)
    peft.save_adapter(tmp_path, model, adapted)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    assert "transformer.h.0.attn.c_proj" in config["target_modules"]
    reference = PeftModel.from_pretrained(hf_model(directory), tmp_path).eval()
    ours = np.asarray(model.apply(adapted, IDS))
    np.testing.assert_allclose(ours, hf_logits(reference, IDS), atol=LOGITS_TOL, rtol=0)
    again = peft.load_adapter(tmp_path, model, params)
    np.testing.assert_allclose(np.asarray(model.apply(again, IDS)), ours, atol=1e-6, rtol=0)


def test_trainable_count_matches_peft(llama):
    directory, _, params = llama
    reference = get_peft_model(hf_model(directory), LoraConfig(r=4, target_modules="all-linear"))
    adapted = peft.lora(params, "all-linear", rank=4, rng=KEY)
    assert peft.count_parameters(adapted) == reference.get_nb_trainable_parameters()


def test_adapter_file_that_does_not_fit_names_the_key(llama, tmp_path):
    _, model, params = llama
    adapted = peft.lora(params, ["q_proj"], rank=4, rng=KEY)
    peft.save_adapter(tmp_path, model, adapted)
    from jaxtune.models.safetensors_io import SafetensorsFile, write_safetensors

    tensors = dict(SafetensorsFile(tmp_path / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    bad_shape = dict(tensors, **{key: np.zeros((4, 63), np.float32)})
    write_safetensors(tmp_path / "adapter_model.safetensors", bad_shape)
    with pytest.raises(peft.AdapterFileError, match=r"layers\.1\.self_attn\.q_proj\.lora_A.*63"):
        peft.load_adapter(tmp_path, model, params)

    stray = "base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight"
    bad_key = dict(tensors, **{stray: np.zeros((4, 64), np.float32)})
    write_safetensors(tmp_path / "adapter_model.safetensors", bad_key)
    with pytest.raises(peft.AdapterFileError, match="qq_proj"):
        peft.load_adapter(tmp_path, model, params)


KEY = jax.random.PRNGKey(0)
