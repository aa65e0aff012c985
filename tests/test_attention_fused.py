"""Fused attention paths equal the reference attention on CPU, with packed rows (segment ids),
padding, sliding windows and soft-capping.

On CPU `xla` runs jax.nn.dot_product_attention; `cudnn` and `fused` route to it (no GPU here:
the cuDNN kernel itself runs in scripts/gpu_check.sh); `splash` runs the real Pallas TPU kernel in
interpret mode. Rows of padding queries are don't-care and not compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.models import CausalLM, ModelConfig
from jaxtune.models.attention import (
    ATTENTION_IMPLS,
    AttentionMask,
    attention,
    causal_mask,
    splash_attention,
)

ATOL = 1e-5


def inputs(t=32, h=4, n_kv=2, d=16, window=None, sliding=None, seed=0):
    """q, k, v, the mask in both forms, and the valid-query rows, for two packed rows."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, n, d)), jnp.float32) for n in (h, n_kv, n_kv))
    seg = np.ones((2, t), np.int32)
    seg[0, t // 3 :] = 2
    seg[1, t // 2 :] = 2
    seg[1, t - 5 :] = 0  # padding
    seg = jnp.asarray(seg)
    parts = AttentionMask(
        q_slots=jnp.broadcast_to(jnp.arange(t), (2, t)),
        k_slots=jnp.arange(t),
        k_valid=seg > 0,
        q_segments=seg,
        k_segments=seg,
        sliding=sliding,
        window=window,
        aligned=True,
    )
    return q, k, v, parts, np.asarray(seg > 0)


CASES = {
    "packed": dict(),
    "packed_window": dict(window=5),
    "window_off_in_this_layer": dict(window=5, sliding=jnp.asarray(False)),
}


def test_attention_mask_is_the_mask_rule():
    q, k, v, parts, _ = inputs(window=5)
    args = (parts.q_slots, parts.k_slots, parts.k_valid, parts.q_segments, parts.k_segments)
    np.testing.assert_array_equal(parts.dense(), causal_mask(*args, window=5))
    off = parts.replace(sliding=jnp.asarray(False))
    np.testing.assert_array_equal(off.dense(), causal_mask(*args))
    np.testing.assert_array_equal(
        attention(q, k, v, parts, 0.25), attention(q, k, v, parts.dense(), 0.25)
    )


@pytest.mark.parametrize("impl", ["xla", "cudnn", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "parts"])
def test_jax_nn_paths_equal_reference(impl, case, dense):
    q, k, v, parts, valid = inputs(**CASES[case])
    mask = parts.dense() if dense else parts
    fn = jax.jit(ATTENTION_IMPLS[impl], static_argnums=(4, 5))
    got = fn(q, k, v, mask, 0.25, None)
    want = attention(q, k, v, parts.dense(), 0.25)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=ATOL)


@pytest.mark.parametrize("impl", ["xla", "cudnn", "fused"])
def test_softcap_is_routed_to_the_reference(impl):
    q, k, v, parts, valid = inputs(window=5)
    got = ATTENTION_IMPLS[impl](q * 4, k, v, parts, 0.25, 3.0)
    want = attention(q * 4, k, v, parts.dense(), 0.25, 3.0)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=ATOL)


@pytest.fixture(scope="module")
def splash_case():
    """T = 128 (the kernel's smallest block), GQA 4 heads over 2, packed + padding + window."""
    return inputs(t=128, h=4, n_kv=2, d=64, window=24)


@pytest.mark.parametrize("sliding", [True, False])
@pytest.mark.parametrize("cap", [None, 2.0])
def test_splash_kernel_equals_reference(splash_case, sliding, cap):
    q, k, v, parts, valid = splash_case
    parts = parts.replace(sliding=jnp.asarray(sliding))
    fn = jax.jit(lambda q, k, v, m: splash_attention(q, k, v, m, 0.125, cap, interpret=True))
    got = fn(q, k, v, parts)
    want = attention(q, k, v, parts.dense(), 0.125, cap)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=ATOL)


def test_splash_kernel_gradients_equal_reference(splash_case):
    q, k, v, parts, valid = splash_case
    weight = jnp.asarray(valid, jnp.float32)[:, :, None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)) * weight)

    kernel = loss(lambda q, k, v: splash_attention(q, k, v, parts, 0.125, interpret=True))
    reference = loss(lambda q, k, v: attention(q, k, v, parts.dense(), 0.125))
    got = jax.jit(jax.grad(kernel, argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4)


def test_model_logits_with_fused_attention_equal_reference():
    """The decoder with attention_impl='fused' (xla on CPU): packed rows, sliding layers."""
    cfg = ModelConfig(
        family="mistral",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        sliding_window=4,
        layer_types=("sliding", "full"),
    )
    params = jax.jit(CausalLM(cfg).init)(jax.random.PRNGKey(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)
    seg = jnp.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], jnp.int32)
    valid = np.asarray(seg > 0)

    def logits(impl):
        model = CausalLM(cfg, attention_impl=impl)
        return jax.jit(model.apply)(params, ids, segment_ids=seg, attention_mask=seg > 0)

    want = np.asarray(logits("reference"))[valid]
    np.testing.assert_allclose(np.asarray(logits("fused"))[valid], want, atol=ATOL)


def test_splash_kernel_runs_per_shard_under_a_mesh():
    """Under sharding.use_mesh on 8 devices the kernel is wrapped in shard_map (batch over
    fsdp x data, heads over tensor) and still equals the reference."""
    import subprocess
    import sys

    from tests.sharding_runs import ROOT, env

    proc = subprocess.run(
        [sys.executable, "-m", "tests.attention_mesh_worker"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    per_shard, error = (part.split("=")[1] for part in line.split())
    assert per_shard == "True"
    assert float(error) < ATOL


def test_auto_is_the_reference_on_cpu_and_the_fused_kernels_on_accelerators(monkeypatch):
    from jaxtune.models import attention as attn_lib

    q, k, v, parts, _ = inputs()
    got = ATTENTION_IMPLS["auto"](q, k, v, parts, 0.25, None)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(attention(q, k, v, parts, 0.25)))
    for backend, impl in (("cpu", "reference"), ("gpu", "fused"), ("tpu", "fused")):
        monkeypatch.setattr(attn_lib.jax, "default_backend", lambda b=backend: b)
        assert attn_lib.backend_impl() == impl
