"""NF4 / FP4 codes, absmax constants and dequantized values against bitsandbytes (CPU).

bitsandbytes quantizes a torch weight W [out, in]; jaxtune quantizes its kernel W.T [in, out]
with blocks along `in`, so bnb's packed bytes are our `data.T` flattened and its absmax our
`absmax.T` flattened (see jaxtune/quant/blockwise.py). Tolerance 1e-6 as the issue asks; only the
double-quantization offset (a float32 mean, whose summation order in torch depends on the CPU's
vector width and thread count) is compared relatively, and it is the same to an ulp or two.
"""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxtune.quant import codebooks, quantize
from jaxtune.quant.transform import QuantSpec, quantize_weight

TOL = 1e-6
# (out, in), in a multiple of 64: 3 and 1000 absmax values (a partial block of 256 for the
# double quantization), 4352 (17 blocks exactly, with an all-zero block and exact code values).
SHAPES = [(3, 64), (40, 1600), (272, 1024)]
dense = jax.jit(lambda leaf: leaf.materialize())


def weight(out: int, n_in: int, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out, n_in)) * scale).astype(np.float32)
    w[rng.random(w.shape) < 0.03] = 0.0  # exact zeros (FP4 has two zero codes)
    if out * n_in >= 4096:
        w[0, :64] = 0.0  # an all-zero block
        w[1, :16] = codebooks.NF4[:16] * np.abs(w[1, 16:80]).max()  # values on the code points
    return w


def bnb_quantize(w: np.ndarray, method: str, nested: bool, dtype=torch.float32):
    packed, state = bnbf.quantize_4bit(
        torch.from_numpy(w).to(dtype), blocksize=64, compress_statistics=nested, quant_type=method
    )
    return packed, state


def test_code_books_are_bitsandbytes():
    for method, ours in (("nf4", codebooks.NF4), ("fp4", codebooks.FP4)):
        np.testing.assert_array_equal(ours, bnbf.get_4bit_type(method, device="cpu").numpy())
    np.testing.assert_array_equal(codebooks.DYNAMIC8, bnbf.create_dynamic_map().numpy())


def test_dynamic_code_matches_bnb_cpu_kernel():
    """Our 8-bit coding (thresholds on v) picks bnb's CPU codes for any value in [-1, 1]."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 50_000).astype(np.float32)
    x[:6] = [1.0, -1.0, 0.0, 1e-7, -1e-7, 0.5]
    code = bnbf.create_dynamic_map()
    ref, _ = torch.ops.bitsandbytes.quantize_blockwise.default(torch.from_numpy(x), code, 65536)
    from jaxtune.quant.blockwise import code8

    np.testing.assert_array_equal(np.asarray(code8(jnp.asarray(x))), ref.numpy())


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "double_quant"])
@pytest.mark.parametrize("method", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{o}x{i}" for o, i in SHAPES])
def test_matches_bitsandbytes(shape, method, nested):
    out, n_in = shape
    w = weight(out, n_in, seed=out + n_in)
    packed, state = bnb_quantize(w, method, nested)
    spec = QuantSpec.make(method, 64, nested, "float32")
    leaf = quantize_weight(jnp.asarray(w.T), spec)

    np.testing.assert_array_equal(np.asarray(leaf.data).T.reshape(-1), packed.numpy().reshape(-1))
    ours_absmax = np.asarray(leaf.absmax).T.reshape(-1)
    if nested:
        np.testing.assert_array_equal(ours_absmax, state.absmax.numpy())  # 8-bit codes
        np.testing.assert_allclose(
            np.asarray(leaf.absmax_scale), state.state2.absmax.numpy(), rtol=0, atol=TOL
        )
        np.testing.assert_allclose(float(leaf.absmax_offset), float(state.offset), rtol=TOL)
    else:
        np.testing.assert_allclose(ours_absmax, state.absmax.numpy(), rtol=0, atol=TOL)

    ref = bnbf.dequantize_4bit(packed, state).numpy()
    np.testing.assert_allclose(np.asarray(dense(leaf)).T, ref, rtol=TOL, atol=TOL)


def test_bf16_weights_dequantize_like_bitsandbytes():
    """A bf16 weight: same codes, and the bf16 dequantized values are bit-identical."""
    w = weight(48, 256, seed=7)
    packed, state = bnb_quantize(w, "nf4", True, dtype=torch.bfloat16)
    w_bf16 = jnp.asarray(torch.from_numpy(w).to(torch.bfloat16).float().numpy().T, jnp.bfloat16)
    leaf = quantize_weight(w_bf16, QuantSpec.make("nf4", 64, True, "float32"))
    np.testing.assert_array_equal(np.asarray(leaf.data).T.reshape(-1), packed.numpy().reshape(-1))
    restored = dense(leaf)
    assert restored.dtype == jnp.bfloat16
    ours = np.asarray(restored.astype(jnp.float32)).T
    np.testing.assert_array_equal(ours, bnbf.dequantize_4bit(packed, state).float().numpy())


def test_stacked_weight_quantizes_each_layer_like_bitsandbytes():
    """A scanned (L, in, out) kernel: every array keeps the layer axis; layer i equals bnb on
    layer i alone (its own absmax statistics and offset)."""
    layers = [weight(64, 128, seed=i, scale=0.02 * (i + 1)) for i in range(3)]
    kernel = jnp.asarray(np.stack([w.T for w in layers]))
    params = {"layers": {"mlp": {"up_proj": {"kernel": kernel}}}}
    leaf = quantize(params, method="nf4", compute_dtype="float32")["layers"]["mlp"]["up_proj"][
        "kernel"
    ]
    assert leaf.data.shape == (3, 64, 64) and leaf.absmax.shape == (3, 2, 64)
    assert leaf.absmax_scale.shape == (3, 1) and leaf.absmax_offset.shape == (3,)
    restored = np.asarray(dense(leaf))
    for i, w in enumerate(layers):
        packed, state = bnb_quantize(w, "nf4", True)
        np.testing.assert_array_equal(np.asarray(leaf.data[i]).T.reshape(-1), packed.numpy()[:, 0])
        ref = bnbf.dequantize_4bit(packed, state).numpy()
        np.testing.assert_allclose(restored[i].T, ref, rtol=TOL, atol=TOL)
