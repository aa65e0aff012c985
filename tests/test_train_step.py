"""The jitted train step: gradient accumulation equals one large batch; a non-finite loss leaves
the params untouched; the reported loss is the token-weighted mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import models, sharding
from jaxtune.data import make_batches, set_path
from jaxtune.train import TrainState, make_train_step
from jaxtune.train.stages.sft import LMStage
from tests.train_support import small_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, params = models.load(tiny_llama(tmp_path_factory.mktemp("step") / "llama"))
    data = {"train": set_path("instruct"), "truncation": "truncate", "shuffle": False}
    batch = next(make_batches(data, small_tokenizer(), stage="sft", batch_size=8, seq_len=96))
    mesh = sharding.make_mesh((1, 1, 1))
    return model, params, batch, mesh


def one_step(setup, grad_accum: int, batch=None, optimizer=None):
    model, params, default_batch, mesh = setup
    batch = default_batch if batch is None else batch
    optimizer = optimizer or optax.sgd(1.0)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = TrainState.create(jax.tree.map(jnp.copy, params), optimizer, jax.random.PRNGKey(0))
    state_sh = jax.tree.map(lambda _: rep, state)
    step = make_train_step(
        model,
        LMStage(),
        optimizer,
        batch_sharding=sharding.batch_sharding(mesh),
        state_shardings=state_sh,
        frozen_shardings={},
        grad_accum=grad_accum,
    )
    return step(state, {}, jax.tree.map(jnp.asarray, batch))


@pytest.mark.parametrize("k", [4])
def test_accumulation_equals_one_large_batch(setup, k):
    whole, m1 = one_step(setup, 1)
    accumulated, mk = one_step(setup, k)
    np.testing.assert_allclose(float(mk["loss"]), float(m1["loss"]), rtol=1e-6)
    assert float(mk["loss_tokens"]) == float(m1["loss_tokens"]) == setup[2]["loss_mask"].sum()
    for a, b in zip(
        jax.tree.leaves(accumulated.params), jax.tree.leaves(whole.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)
    moved = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(setup[1]), strict=True)
    )
    assert moved > 1e-3  # the comparison is much finer than the update


def test_reported_loss_is_the_token_weighted_mean(setup):
    model, params, batch, _ = setup
    _, metrics = one_step(setup, 1)
    out = LMStage().loss(model, params, jax.tree.map(jnp.asarray, batch), None, False)
    np.testing.assert_allclose(float(metrics["loss"]), float(out.total / out.weight), rtol=1e-6)
    assert float(metrics["finite"]) == 1.0


def test_non_finite_step_keeps_params_and_optimizer_state(setup):
    _, params, batch, _ = setup
    bad = dict(batch, loss_mask=batch["loss_mask"].copy())
    bad["loss_mask"][1, np.argmax(bad["loss_mask"][1])] = np.inf
    state, metrics = one_step(setup, 2, bad, optax.adam(1e-2))
    assert float(metrics["finite"]) == 0.0 and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
