"""The fast decode path: unstacked layers and a per-layer KV cache give the stacked path's logits,
and generation's decode loop runs them (no layer scan, so no weight slicing per token)."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune.models as jm
from jaxtune.generate import decode as decode_lib
from jaxtune.models.decoder import unstack_cache, unstack_layers

TOL = 1e-5  # fp32: the same operations in another order of layers' buffers


@pytest.mark.parametrize("name", ["llama", "gemma3"])  # gemma3: sliding and global layers
def test_unstacked_layers_and_cache_match_the_stacked_path(tiny_checkpoint, name):
    model, params = jm.load(tiny_checkpoint(name))
    rng = np.random.default_rng(0)
    b, p, steps = 2, 7, 4
    ids = rng.integers(3, 128, size=(b, p)).astype(np.int32)
    mask = np.ones((b, p), np.int32)
    mask[1, :3] = 0  # a left-padded row
    new = rng.integers(3, 128, size=(b, steps)).astype(np.int32)

    def run(params, unstack: bool):
        cache = model.init_cache(b, p + steps)
        if unstack:
            params, cache = unstack_layers(params), unstack_cache(cache)
        logits, cache = model.apply(params, ids, attention_mask=mask, cache=cache)
        out = [logits[:, -1]]
        for t in range(steps):
            logits, cache = model.apply(params, new[:, t : t + 1], cache=cache)
            out.append(logits[:, 0])
        return jnp.stack(out, 1)

    stacked = np.asarray(jax.jit(lambda prm: run(prm, False))(params))
    unstacked = np.asarray(jax.jit(lambda prm: run(prm, True))(params))
    np.testing.assert_allclose(unstacked, stacked, atol=TOL, rtol=0)


def test_decode_loop_runs_unrolled_layers(tiny_checkpoint):
    """The while loop's body holds no scan over the stacked layers (the prefill keeps it)."""
    model, params = jm.load(tiny_checkpoint("llama"))
    ids = np.ones((2, 4), np.int32)
    jaxpr = jax.make_jaxpr(
        lambda prm: decode_lib._generate(
            model,
            prm,
            ids,
            ids.astype(bool),
            jax.random.key(0),
            decode_lib.eos_array(()),
            np.int32(0),
            max_new_tokens=3,
            sampling=decode_lib.SamplingConfig(0.0, 0, 1.0),
        )
    )(params)

    def eqns(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from eqns(sub)

    (loop,) = [e for e in eqns(jaxpr.jaxpr) if e.primitive.name == "while"]
    body = {e.primitive.name for e in eqns(loop.params["body_jaxpr"].jaxpr)}
    assert "scan" not in body
    assert "scan" in {e.primitive.name for e in eqns(jaxpr.jaxpr)}  # the prefill keeps it
