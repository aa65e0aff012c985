"""QLoRA: LoRA over NF4 bases. Forward parity with transformers + bitsandbytes + peft, learning,
quantize-while-loading, and the merged bf16 export that transformers reloads."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxtune.models as jm
from jaxtune import peft, quant
from jaxtune.errors import UserError
from jaxtune.quant import QuantizedWeight
from tests.tiny_models import hf_config

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8.0
TOL = 1e-4  # fp32 logits, as the model parity tests (see test_qlora_forward_matches_...)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny llama whose input dims (64, 128) are multiples of bitsandbytes' block of 64."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = hf_config("llama")
    config.intermediate_size = 128
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    directory = tmp_path_factory.mktemp("llama64")
    model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 128, size=(2, 10))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model, params): NF4 (double-quantized) while loading."""
    return quant.load_quantized(checkpoint, method="nf4", compute_dtype="float32")


@pytest.fixture(scope="module")
def apply(loaded):
    return jax.jit(loaded[0].apply)


@pytest.fixture(scope="module")
def qlora(loaded):
    """(model, params): LoRA on every linear of the NF4 model, B non-zero."""
    model, params = loaded
    params = peft.lora(params, MODULES, rank=RANK, alpha=ALPHA, rng=jax.random.key(0))
    rng = np.random.default_rng(1)

    def randomize(leaf):
        if not isinstance(leaf, peft.LoraWeight):
            return leaf
        a = rng.normal(0, 0.1, leaf.lora_a.shape).astype(np.float32)
        b = rng.normal(0, 0.1, leaf.lora_b.shape).astype(np.float32)
        return leaf.replace(lora_a=jnp.asarray(a), lora_b=jnp.asarray(b))

    is_lora = lambda x: isinstance(x, peft.LoraWeight)
    return model, jax.tree.map(randomize, params, is_leaf=is_lora)


def test_load_quantized_equals_quantize_after_load(checkpoint, loaded):
    """Quantizing tensor by tensor while reading gives exactly quantize(load(...))."""
    _, streamed = loaded
    _, params = jm.load(checkpoint)
    whole = quant.quantize(params, method="nf4", compute_dtype="float32")
    assert jax.tree.structure(streamed) == jax.tree.structure(whole)
    for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(whole), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_qlora_forward_matches_transformers_bitsandbytes_peft(checkpoint, qlora, apply, ids):
    """Same checkpoint, NF4 + double quantization on both sides, same adapter weights.

    Tolerance 1e-4 on fp32 logits, as for the unquantized models: both sides dequantize to the
    same float32 weights (bit-exact, tests/test_quant_bnb_parity.py) and multiply in float32,
    so only the summation order of the matmuls differs. The reference runs in train mode (no
    dropout anywhere): that is bnb's QLoRA training path. In eval mode on CPUs with AVX512-BF16,
    bnb switches to an inference kernel that computes in bf16 whatever the compute dtype.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        checkpoint, quantization_config=bnb, dtype=torch.float32, device_map="cpu"
    )
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=MODULES, lora_dropout=0.0)
    ref_model = get_peft_model(base, lora).train()

    _, params = qlora
    layers = params["layers"]
    with torch.no_grad():
        for name, module in ref_model.named_modules():
            if not name.endswith(tuple(MODULES)) or not hasattr(module, "lora_A"):
                continue
            index = int(name.split(".layers.")[1].split(".")[0])
            group = "self_attn" if ".self_attn." in name else "mlp"
            leaf = layers[group][name.rsplit(".", 1)[1]]["kernel"]
            assert isinstance(leaf.base, QuantizedWeight)
            module.lora_A["default"].weight.copy_(torch.from_numpy(np.array(leaf.lora_a[index]).T))
            module.lora_B["default"].weight.copy_(torch.from_numpy(np.array(leaf.lora_b[index]).T))
        ref = ref_model(torch.tensor(ids)).logits.numpy()

    ours = np.asarray(apply(params, ids))
    assert np.abs(ref).max() > 0.5  # logits carry signal
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_qlora_trains_adapters_only(qlora, ids):
    """A few Adam steps lower the loss; the quantized base stays bit-identical."""
    model, params = qlora
    params = jax.tree.map(
        lambda x: (
            x.replace(lora_b=jnp.zeros_like(x.lora_b)) if isinstance(x, peft.LoraWeight) else x
        ),
        params,
        is_leaf=lambda x: isinstance(x, peft.LoraWeight),
    )
    trainable, frozen = peft.split_trainable(params)
    inputs, targets = jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])

    def loss_fn(trainable):
        logits = model.apply(peft.combine(trainable, frozen), inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(trainable, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    opt_state = optimizer.init(trainable)
    losses = []
    for _ in range(10):
        trainable, opt_state, loss = step(trainable, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5, losses  # 4.9 -> 3.9 in 10 steps
    trained = peft.combine(trainable, frozen)
    before = params["layers"]["mlp"]["up_proj"]["kernel"].base
    after = trained["layers"]["mlp"]["up_proj"]["kernel"].base
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dora_over_nf4_equals_dora_over_its_dequantized_base(loaded, apply, ids):
    """QDoRA: DoRA's column norms and matmul work through the quantized base generically."""
    _, params = loaded
    key = jax.random.key(2)
    adapted = peft.dora(params, "all-linear", rank=RANK, alpha=ALPHA, rng=key)
    reference = peft.dora(quant.dequantize(params), "all-linear", rank=RANK, alpha=ALPHA, rng=key)
    ours = apply(adapted, ids)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(apply(reference, ids)), atol=1e-5)


def test_export_merged_reloads_in_transformers(qlora, apply, ids, tmp_path):
    """The adapters merged into the dequantized base, written in bf16: transformers' logits
    equal ours on the same (bf16-rounded) weights, and the merge equals the QLoRA forward."""
    from transformers import AutoModelForCausalLM

    model, params = qlora
    merged = quant.merged_params(params)
    np.testing.assert_allclose(
        np.asarray(apply(merged, ids)), np.asarray(apply(params, ids)), atol=TOL, rtol=0
    )

    out = quant.export_merged(tmp_path / "merged", model, params, dtype=jnp.bfloat16)
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        ref = reloaded(torch.tensor(ids)).logits.numpy()
    rounded = jax.tree.map(lambda w: w.astype(jnp.bfloat16).astype(jnp.float32), merged)
    np.testing.assert_allclose(np.asarray(apply(rounded, ids)), ref, atol=TOL, rtol=0)


def test_export_refuses_houlsby_adapters(loaded, tmp_path):
    model, params = loaded
    params = peft.adapter(params, bottleneck=4, rng=jax.random.key(0))
    with pytest.raises(UserError, match=r"(?i)adapter"):
        quant.export_merged(tmp_path / "out", model, params)
