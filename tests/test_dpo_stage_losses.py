"""Each DPO-family stage's loss is the pure loss of jaxtune.losses on the same log-probs (real
batches of the data worker, a stub model for speed), and packed pairs count like unpacked ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.data import make_batches, set_path
from jaxtune.losses import DPO_LOSS_TYPES, dpo_loss, kto_loss, orpo_loss, simpo_loss
from jaxtune.train.pair_logps import pair_logps, sequence_totals, sequences
from jaxtune.train.stages import dpo, kto, orpo, simpo
from tests.dpo_support import StubModel, stub_params
from tests.train_support import small_tokenizer

MODEL = StubModel()
TOL = dict(atol=1e-6, rtol=1e-6)


def batches(stage: str, rows: int = 6, **data):
    config = {"train": set_path("preference"), "shuffle": False, "truncation": "truncate", **data}
    it = make_batches(config, small_tokenizer(), stage=stage, batch_size=rows, seq_len=128)
    return next(it)


@pytest.fixture(scope="module")
def pairs():
    params, ref = stub_params(0), stub_params(1)
    batch = batches("dpo")
    logps = jax.jit(lambda p, b: pair_logps(MODEL, p, b))
    ref_logps = logps(ref, batch)
    batch = dict(batch, ref_chosen_logps=ref_logps.chosen, ref_rejected_logps=ref_logps.rejected)
    return params, batch, logps(params, batch), ref_logps


def first(x) -> np.ndarray:
    """Column 0 of a per-unit [B, T] array: the one pair of each unpacked row."""
    return np.asarray(x)[:, 0]


def check(out, pure):
    assert float(out.weight) == float(pure.weight)
    np.testing.assert_allclose(float(out.total / out.weight), float(pure.loss), **TOL)
    for name, (s, c) in pure.metrics.items():
        got = out.metrics[name][0] / out.metrics[name][1]
        np.testing.assert_allclose(float(got), float(s / c), atol=1e-5, rtol=1e-6, err_msg=name)


def test_dpo_stage_loss_is_the_pure_loss_for_every_loss_type(pairs):
    params, batch, policy, ref = pairs
    smoothing = {"robust": 0.2, "cdpo": 0.2}
    stages = [
        dpo.DPOStage(beta=0.5, loss_type=t, label_smoothing=smoothing.get(t, 0.0))
        for t in DPO_LOSS_TYPES
    ]
    outs = jax.jit(lambda p, b: [s.loss(MODEL, p, b, None, True) for s in stages])(params, batch)
    for stage, out in zip(stages, outs, strict=True):
        pure = dpo_loss(
            first(policy.chosen),
            first(policy.rejected),
            first(ref.chosen),
            first(ref.rejected),
            beta=0.5,
            loss_type=stage.loss_type,
            label_smoothing=stage.label_smoothing,
            chosen_lengths=first(policy.chosen_len),
            rejected_lengths=first(policy.rejected_len),
        )
        check(out, pure)


def test_orpo_and_simpo_stage_losses_are_the_pure_losses(pairs):
    params, batch, policy, _ = pairs
    avg_c = first(policy.chosen) / first(policy.chosen_len)
    avg_r = first(policy.rejected) / first(policy.rejected_len)
    o = orpo.ORPOStage(beta=0.3)
    s = simpo.SimPOStage(beta=2.0, gamma=0.5, label_smoothing=0.1, sft_weight=0.5)
    outs = jax.jit(lambda p, b: [x.loss(MODEL, p, b, None, True) for x in (o, s)])(params, batch)
    check(outs[0], orpo_loss(avg_c, avg_r, -avg_c, beta=0.3))
    pure = simpo_loss(
        avg_c, avg_r, beta=2.0, gamma=0.5, label_smoothing=0.1, chosen_nll=-avg_c, sft_weight=0.5
    )
    check(outs[1], pure)


def test_kto_stage_loss_is_the_pure_loss():
    params, ref = stub_params(0), stub_params(1)
    batch = batches("kto")
    assert set(batch["kto_label"]) == {0, 1}
    totals = jax.jit(
        lambda p, b: [sequence_totals(MODEL, p, sequences(b, x))[0] for x in ("", "kl_")]
    )
    batch["ref_logps"], batch["ref_kl_logps"] = totals(ref, batch)
    stage = kto.KTOStage(beta=0.5, desirable_weight=1.3, undesirable_weight=0.7)
    out = jax.jit(lambda p, b: stage.loss(MODEL, p, b, None, True))(params, batch)
    rows, kl_rows = (first(x) for x in totals(params, batch))
    z0 = jnp.maximum(jnp.mean(kl_rows - first(batch["ref_kl_logps"])), 0.0)
    pure = kto_loss(
        rows, first(batch["ref_logps"]), batch["kto_label"], z0,
        beta=0.5, desirable_weight=1.3, undesirable_weight=0.7,
    )  # fmt: skip
    check(out, pure)


def test_packed_pairs_have_the_log_probs_of_unpacked_pairs():
    params = stub_params(0)
    logps = jax.jit(lambda p, b: pair_logps(MODEL, p, b))
    packed = jax.device_get(logps(params, batches("dpo", rows=2, packing=True)))
    valid = np.asarray(packed.valid)
    n = int(valid.sum())
    assert n > 2  # several pairs per row
    single = jax.device_get(logps(params, batches("dpo", rows=n)))
    for got, want in zip(packed, single, strict=True):
        np.testing.assert_allclose(np.asarray(got)[valid], first(want), atol=1e-4, rtol=1e-6)


def test_padding_rows_of_an_eval_pass_do_not_count(pairs):
    params, batch, _, _ = pairs
    padded = {k: v.copy() for k, v in batch.items()}
    for k in padded:
        if k.endswith("segment_ids") or k.endswith("loss_mask"):
            padded[k][-2:] = 0  # the last two rows: padding
    stage = dpo.DPOStage(beta=0.5)
    out, cut = jax.jit(lambda p, a, b: [stage.loss(MODEL, p, x, None, False) for x in (a, b)])(
        params, padded, {k: v[:-2] for k, v in batch.items()}
    )
    assert float(out.weight) == float(cut.weight) == 4.0
    np.testing.assert_allclose(float(out.total), float(cut.total), **TOL)
