"""The reference model of the DPO family on a tiny real model: adapters off give the base
model's log-probs exactly; cached and copied reference log-probs give the on-the-fly loss."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.peft.lora import LoraWeight
from jaxtune.train import ref_logps
from jaxtune.train.build import build_run, make_batches
from jaxtune.train.pair_logps import pair_logps
from jaxtune.train.reference import Reference
from jaxtune.train.stages import dpo
from tests.dpo_support import config_for, tiny_dir, workdir


def perturb_adapters(params, seed: int = 0):
    """Random nonzero lora_b, so that the adapted model differs from the base."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))

    def bump(x):
        if isinstance(x, LoraWeight):
            b = 0.3 * jax.random.normal(next(keys), x.lora_b.shape, x.lora_b.dtype)
            return dataclasses.replace(x, lora_b=b)
        return x

    return jax.tree.map(bump, params, is_leaf=lambda x: isinstance(x, LoraWeight))


@pytest.fixture(scope="module")
def setup():
    config = config_for(str(workdir() / "reference_run"))
    run = build_run(config, quiet=True)
    params = perturb_adapters(run.combine(run.trainable, run.frozen))
    batch = next(make_batches(config, run.tokenizer, run.stage, "train"))
    logps = jax.jit(lambda p, b: pair_logps(run.model, p, b))
    return run, params, batch, logps


def test_adapters_off_give_the_base_models_log_probs_exactly(setup):
    from jaxtune import models

    run, params, batch, logps = setup
    _, base = models.load(tiny_dir(), jnp.float32)
    reference = Reference.for_run(run)
    assert reference.mode == "disable"
    ref = jax.device_get(logps(reference.params(params), batch))
    plain = jax.device_get(logps(base, batch))
    for a, b in zip(ref, plain, strict=True):
        np.testing.assert_array_equal(a, b)
    adapted = jax.device_get(logps(params, batch))
    assert np.abs(adapted.chosen - plain.chosen).max() > 1e-2  # the adapters do matter


def test_cached_and_copied_reference_give_the_on_the_fly_loss(setup):
    run, params, batch, _ = setup
    on_the_fly = dpo.DPOStage(beta=0.5)
    settings = ref_logps.RefSettings("cache", "disable", str(workdir() / "ref_cache"))
    cached = dataclasses.replace(on_the_fly, reference=settings)

    def two_batches():
        it = ref_logps.ReferenceBatches(cached, run, iter([batch, batch]), lambda: params)
        return next(it), next(it), it.computed

    first, again, computed = two_batches()
    assert computed == 4  # the second batch's pairs come from the cache
    from_disk, _, computed = two_batches()
    assert computed == 0  # a later run reads every pair from disk
    for k in cached.ref_keys:
        np.testing.assert_array_equal(first[k], again[k])
        np.testing.assert_array_equal(first[k], from_disk[k])

    def loss(stage, b):
        return stage.loss(run.model, params, b, None, False)

    want, got = jax.jit(lambda a, b: (loss(on_the_fly, a), loss(cached, b)))(batch, from_disk)
    np.testing.assert_allclose(float(got.total), float(want.total), atol=1e-6, rtol=1e-6)

    copy = dataclasses.replace(on_the_fly, reference=ref_logps.RefSettings("copy", "copy"))
    copied = next(ref_logps.ReferenceBatches(copy, run, iter([batch]), lambda: params))
    out = jax.jit(lambda b: loss(copy, b))(copied)  # reference = the step-0 policy itself
    np.testing.assert_allclose(float(out.total), float(out.weight) * np.log(2.0), rtol=1e-6)


def test_copy_holds_new_buffers_for_trainable_arrays_only(setup):
    _, params, _, _ = setup
    copy = Reference("copy").params(params)
    leaf = lambda t: t["layers"]["self_attn"]["q_proj"]["kernel"]
    assert leaf(copy).base is leaf(params).base  # the frozen base is shared
    assert leaf(copy).lora_b is not leaf(params).lora_b
    np.testing.assert_array_equal(leaf(copy).lora_b, leaf(params).lora_b)


def test_resumed_full_fine_tuning_keeps_the_step0_reference():
    """reference=copy without PEFT: a resumed run rebuilds the step-0 reference from the model
    files (not from the resumed params), so it computes the uninterrupted run's losses."""
    from jaxtune.train import loop, train

    def config(name: str):
        c = config_for(str(workdir() / name))
        c.peft.method = "none"
        c.dpo.reference = "copy"
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 0
        c.train.steps = 8
        c.train.save_every = 4
        return c

    class Stop(Exception):
        pass

    def stop_at_6(step: int, metrics: dict) -> None:
        if step == 6:
            raise Stop

    full = train(config("resume_full")).losses
    loop.STEP_HOOKS.append(stop_at_6)
    try:
        with pytest.raises(Stop):
            train(config("resume_cut"))
    finally:
        loop.STEP_HOOKS.remove(stop_at_6)
    resumed = train(config("resume_cut")).losses
    assert sorted(resumed) == [5, 6, 7, 8]  # from the checkpoint of step 4
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], abs=1e-6), step
