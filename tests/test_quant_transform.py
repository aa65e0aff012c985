"""quant.quantize / dequantize over param trees: the leaf protocol inside jaxtune models, int8
error bounds, no dequantized weight kept for the backward pass, checkpoints, and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune.models as jm
from jaxtune import peft, quant
from jaxtune.models.layers import linear
from jaxtune.quant import QuantizationError, QuantizedWeight

BLOCK = 32  # the tiny models' input dims (64, 96) are multiples of 32


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return jm.load(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 128, size=(2, 9))


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_quantized_forward_equals_forward_of_dequantized_weights(tiny, ids, method):
    """The leaf's in-matmul dequantization is exactly `materialize` (fp32: <= 1e-5)."""
    model, params = tiny
    qparams = quant.quantize(params, method=method, block_size=BLOCK, compute_dtype="float32")
    leaf = qparams["layers"]["mlp"]["down_proj"]["kernel"]
    assert isinstance(leaf, QuantizedWeight) and leaf.shape == (2, 96, 64)
    assert not isinstance(qparams["lm_head"]["kernel"], QuantizedWeight)  # all-linear skips it
    apply = jax.jit(model.apply)
    ours = apply(qparams, ids)
    ref = apply(quant.dequantize(qparams), ids)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)
    # and it is a quantization of the original model, not something else
    assert float(jnp.max(jnp.abs(ours - apply(params, ids)))) < 0.5


@pytest.mark.parametrize("block_size", [32, None], ids=["per_block", "per_channel"])
def test_int8_round_trip_error_bound(block_size):
    """|w - dequantized| <= absmax / 254 of its block (+ float32 rounding)."""
    w = jax.random.normal(jax.random.key(1), (3, 96, 40)) * jnp.linspace(0.01, 2.0, 40)
    leaf = quant.quantize({"kernel": w}, method="int8", block_size=block_size)["kernel"]
    assert leaf.data.dtype == jnp.int8 and leaf.absmax.shape == (3, 3 if block_size else 1, 40)
    error = jnp.abs(w - jax.jit(QuantizedWeight.materialize)(leaf))
    error = error.reshape(3, leaf.absmax.shape[1], -1, 40)
    bound = leaf.absmax[:, :, None, :] / 254 * (1 + 1e-5) + 1e-12
    assert bool(jnp.all(error <= bound))
    assert float(jnp.max(error)) > 0.2 * float(jnp.max(bound))  # the bound is not vacuous


def test_4bit_bytes_per_parameter():
    """NF4 + double quantization stores <= 0.52 bytes per weight (bf16: 2.0)."""
    w = jnp.zeros((4, 576, 1536))
    dq = quant.quantize({"kernel": w}, method="nf4")["kernel"]
    plain = quant.quantize({"kernel": w}, method="nf4", double_quant=False)["kernel"]
    assert dq.nbytes / w.size <= 0.52 < plain.nbytes / w.size


def test_bf16_compute_dtype():
    """The matmul runs on bf16 operands; the result comes back in x's dtype."""
    w = jax.random.normal(jax.random.key(2), (64, 48)) * 0.1
    x = jax.random.normal(jax.random.key(3), (5, 64))
    leaf = quant.quantize({"kernel": w}, compute_dtype="bfloat16")["kernel"]
    y = jax.jit(linear)(x, leaf)
    assert y.dtype == jnp.float32
    dense = jax.jit(QuantizedWeight.dequantize, static_argnums=1)
    bf16 = x.astype(jnp.bfloat16).astype(jnp.float32) @ dense(leaf, jnp.bfloat16).astype(
        jnp.float32
    )
    fp32 = x @ dense(leaf, jnp.float32)
    # XLA may keep the bf16 product's f32 accumulation (excess precision): compare to bf16
    # operands multiplied exactly, and check the operands really were rounded to bf16.
    np.testing.assert_allclose(np.asarray(y), np.asarray(bf16), atol=1e-2, rtol=0)
    assert float(jnp.max(jnp.abs(y - bf16))) < float(jnp.max(jnp.abs(y - fp32)))
    assert quant.default_compute_dtype() == "float32"  # these tests run on CPU


def test_gradient_through_quantized_weight():
    """d/dx equals the dense weight's; the quantized leaf itself gets a zero cotangent."""
    w = jax.random.normal(jax.random.key(4), (64, 32)) * 0.1
    x = jax.random.normal(jax.random.key(5), (3, 64))
    leaf = quant.quantize({"kernel": w}, compute_dtype="float32")["kernel"]
    dense = jax.jit(QuantizedWeight.materialize)(leaf)
    gx = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(linear(x, leaf)))))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.sin(x @ dense)))(x)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(ref), atol=1e-6)
    g_leaf = jax.jit(jax.grad(lambda q: jnp.sum(linear(x, q)), allow_int=True))(leaf)
    assert float(jnp.max(jnp.abs(g_leaf.absmax_scale))) == 0.0


def test_no_dequantized_weight_lives_across_the_backward_pass():
    """Under a scan over 8 layers, the compiled gradient's temporaries hold about one layer's
    dequantized weight, not all of them (which a plain `x @ dequantize(w)` keeps as residuals)."""
    layers, dim = 8, 512
    w = jax.random.normal(jax.random.key(0), (layers, dim, dim)) * 0.05
    leaf = quant.quantize({"kernel": w}, compute_dtype="float32")["kernel"]
    x = jnp.ones((4, dim))

    def loss(x, matmul):
        h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(matmul(h, wl)), None), x, leaf)
        return jnp.sum(h)

    def temp_bytes(matmul) -> int:
        step = jax.jit(jax.grad(lambda x: loss(x, matmul)))
        return step.lower(x).compile().memory_analysis().temp_size_in_bytes

    all_layers = layers * dim * dim * 4
    ours = temp_bytes(linear)
    naive = temp_bytes(lambda h, wl: h @ wl.dequantize())
    assert naive >= all_layers  # the control: residuals of every layer's dense weight
    assert ours < all_layers / 4


def test_quantized_params_round_trip_through_checkpoints(tiny, tmp_path):
    """Quantized leaves are plain uint8/float32 arrays: the train loop's orbax checkpointer
    saves and restores them exactly."""
    from jaxtune.train.checkpoint import Checkpointer

    _, params = tiny
    qparams = quant.quantize(params, block_size=BLOCK)
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(1, qparams, {}, {})
    restored, _, _ = ckpt.restore(1, qparams)
    ckpt.close()
    leaf = restored["layers"]["self_attn"]["q_proj"]["kernel"]
    assert isinstance(leaf, QuantizedWeight) and leaf.data.dtype == jnp.uint8
    for a, b in zip(jax.tree.leaves(qparams), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- errors
def test_block_size_that_does_not_divide(tiny):
    _, params = tiny
    with pytest.raises(QuantizationError, match=r"block_size=64 does not divide .* 96 .*down_proj"):
        quant.quantize(params, block_size=64)
    with pytest.raises(QuantizationError, match="even positive"):
        quant.quantize(params, block_size=33)
    with pytest.raises(QuantizationError, match="int8 only"):
        quant.quantize(params, block_size=None)


def test_target_that_is_not_2d(tiny):
    _, params = tiny
    with pytest.raises(QuantizationError, match=r"layers/input_layernorm/scale .* not a 2-D"):
        quant.quantize(params, targets=["input_layernorm"], block_size=BLOCK)
    with pytest.raises(QuantizationError, match="not a 2-D"):
        quant.quantize(params, targets=lambda path, w: path.endswith("norm/scale"))
    with pytest.raises(QuantizationError, match=r"embed_tokens/embedding .* not a 2-D"):
        quant.quantize(params, targets=["embed_tokens"])
    with pytest.raises(QuantizationError, match=r"matches no weight matrix.*q_proj/kernel"):
        quant.quantize(params, targets=["no_such_module"])


def test_quantizing_twice_or_after_adapters(tiny):
    _, params = tiny
    qparams = quant.quantize(params, block_size=BLOCK)
    with pytest.raises(
        QuantizationError, match=r"layers/.*/kernel is already quantized \(nf4, block 32\)"
    ):
        quant.quantize(qparams, block_size=BLOCK)
    adapted = peft.lora(params, ["q_proj"], rank=2, rng=jax.random.key(0))
    with pytest.raises(QuantizationError, match=r"already carries adapters .* quantize first"):
        quant.quantize(adapted, targets=["q_proj"], block_size=BLOCK)


def test_bad_method_and_options():
    w = {"kernel": jnp.zeros((64, 8))}
    with pytest.raises(QuantizationError, match="nf4, fp4, int8"):
        quant.quantize(w, method="int4")
    with pytest.raises(QuantizationError, match="double_quant=True applies to the 4-bit"):
        quant.quantize(w, method="int8", double_quant=True)
