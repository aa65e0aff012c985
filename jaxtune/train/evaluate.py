"""Evaluation over one pass of a batch iterator, with the stage's own loss and metrics.

    metrics = evaluate(run, eval_step, params, frozen, batches)   # {"eval_loss": ..., ...}

Loss sums and weights add up over the batches before dividing, so the result is the loss over
all eval tokens (pairs, ...) at once, independent of how they were batched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from jaxtune.train import shardings as sh
from jaxtune.train.build import Run, check_batch_ids
from jaxtune.train.step import make_eval_step, reduce_metrics


def evaluate(run: Run, eval_step, params: Any, frozen: Any, batches: Iterable[dict]) -> dict:
    """Eval metrics (prefixed eval_) over batches (at most train.eval_batches of them, 0 = all)."""
    limit = int(run.config.train.eval_batches)
    total = None
    for i, batch in enumerate(batches):
        if limit and i >= limit:
            break
        check_batch_ids(batch, run.model.config.vocab_size, step=-1)
        out = eval_step(params, frozen, sh.put_batch(batch, run.mesh, run.rules))
        total = out if total is None else jax.tree.map(lambda a, b: a + b, total, out)
    if total is None:
        return {}
    metrics = jax.device_get(reduce_metrics(total))
    return {f"eval_{k}": float(v) for k, v in metrics.items()}


def eval_step_for(run: Run, params_shardings: Any = None):
    """The jitted eval step of a run (trainable params laid out as the run's)."""
    return make_eval_step(
        run.model,
        run.stage,
        batch_sharding=sh.sharding.batch_sharding(run.mesh, run.rules),
        rules=run.rules,
        params_shardings=params_shardings or run.trainable_shardings,
        frozen_shardings=run.frozen_shardings,
        combine=run.combine,
    )
