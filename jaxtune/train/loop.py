"""The one training loop of every stage: steps, eval, logging, checkpoints, exact resume.

    result = jaxtune.train.train(config)      # config: a ConfigDict (see jaxtune.train.config)

Per step: next batch (host numpy) -> put on the mesh -> jitted step (state donated). Metrics of
step s are read back after step s+1 is dispatched, so the host never waits for the device except
at log, eval and save points. A step with a non-finite loss or gradient does not change the
params (see step.py); the loop stops at it with a message naming the step and the last good
checkpoint. Resuming restores the state *and* the data iterator's position, and the RNG of step
s is fold_in(seed key, s), so a resumed run computes the same steps as an uninterrupted one.

`STEP_HOOKS` are called as hook(step, metrics) after each step's metrics are known (used by
tests to kill a run at a chosen step, and by notebooks to plot live). A stage's optional
`eval_batches(run, batches, current_params)` hook wraps the eval batches as `train_batches`
wraps the train batches (the DPO family adds reference log-probs there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxtune.errors import UserError
from jaxtune.train import shardings as sh
from jaxtune.train.build import Run, build_run, check_batch_ids, make_batches
from jaxtune.train.checkpoint import Checkpointer
from jaxtune.train.config import check_keys, check_values
from jaxtune.train.evaluate import eval_step_for, evaluate
from jaxtune.train.metrics import MetricsLogger, Progress
from jaxtune.train.state import TrainState
from jaxtune.train.step import make_train_step

STEP_HOOKS: list[Callable[[int, dict[str, float]], None]] = []
EvalBatches = Callable[[], Iterable[dict]]


class NonFiniteLoss(UserError):
    """The loss or the gradient became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    losses: dict[int, float]  # step -> train loss (the steps this process ran)
    evals: dict[int, dict[str, float]]  # step -> eval metrics
    last_checkpoint: int | None
    run: Run


def state_shardings(run: Run, state_shape: TrainState) -> TrainState:
    """Params as laid out by the rules; optimizer moments like their params; scalars replicated."""
    rep = sh.replicated(run.mesh)
    opt = sh.opt_state_shardings(
        state_shape.opt_state, state_shape.params, run.trainable_shardings, run.mesh
    )
    return TrainState(step=rep, params=run.trainable_shardings, opt_state=opt, rng=rep)


def init_state(run: Run, shardings: TrainState) -> TrainState:
    """The initial state, created directly on its shardings."""
    rng = jax.random.PRNGKey(run.config.seed)
    create = lambda params: TrainState.create(params, run.optimizer, rng)
    return jax.jit(create, out_shardings=shardings)(run.trainable)


def run_meta(run: Run) -> dict[str, Any]:
    return {"config": run.config.to_dict(), "model_path": _model_path(run)}


def _model_path(run: Run) -> str:
    from jaxtune.train.build import model_path

    return model_path(run.config)


def _tokens(batch: dict) -> int:
    seg = [v for k, v in batch.items() if k.endswith("segment_ids")]
    return int(sum(np.count_nonzero(s) for s in seg))


def train(
    config: ml_collections.ConfigDict,
    *,
    run: Run | None = None,
    batches: Iterator[dict] | None = None,
    eval_batches: EvalBatches | None = None,
) -> TrainResult:
    """Train per `config`; resume from `<output_dir>/checkpoints` when there is a checkpoint.

    batches / eval_batches replace the data worker's iterators (the train iterator must offer
    state()/restore() for exact resume; eval_batches() returns a fresh one-pass iterable).
    """
    check_keys(config)
    check_values(config)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    run = run or build_run(config)
    t = config.train

    shapes = jax.eval_shape(
        lambda p: TrainState.create(p, run.optimizer, jax.random.PRNGKey(0)), run.trainable
    )
    st_sh = state_shardings(run, shapes)
    frozen_sh, frozen = run.frozen_shardings, run.frozen
    state = init_state(run, st_sh)
    batch_sh = sh.sharding.batch_sharding(run.mesh, run.rules)

    ckpt = Checkpointer(
        out_dir / "checkpoints", max_to_keep=t.max_to_keep, async_save=t.async_checkpoint
    )
    if batches is None:
        batches = make_batches(config, run.tokenizer, run.stage, "train")
    if eval_batches is None and config.data.get("eval"):
        eval_batches = lambda: make_batches(config, run.tokenizer, run.stage, "eval")
    latest = ckpt.latest_step() if t.resume else None
    if latest is not None:
        state, data_state, _ = ckpt.restore(latest, state)
        if data_state and hasattr(batches, "restore"):
            batches.restore(data_state)
    start = int(jax.device_get(state.step))
    hook = getattr(run.stage, "train_batches", None)
    if hook is not None:  # stages that make their own batches (rollouts)
        batches = hook(run, batches, lambda: run.combine(state.params, frozen))

    train_step = make_train_step(
        run.model,
        run.stage,
        run.optimizer,
        batch_sharding=batch_sh,
        rules=run.rules,
        state_shardings=st_sh,
        frozen_shardings=frozen_sh,
        combine=run.combine,
        prepare_params=run.prepare_params,
        mask_updates=run.mask_updates,
        grad_accum=t.grad_accum,
        schedule=run.schedule,
    )
    eval_step = eval_step_for(run, st_sh.params)
    logger = MetricsLogger(
        out_dir,
        resume_step=start,
        tensorboard=config.log.tensorboard,
        wandb_project=config.log.wandb_project,
        run_name=config.log.run_name,
        config=config.to_dict(),
    )
    progress = Progress(t.steps, start)
    if start:
        progress.message(f"resumed from {ckpt.directory / str(start)} (step {start})")
    losses: dict[int, float] = {}
    evals: dict[int, dict[str, float]] = {}
    last_saved = latest

    def do_eval(step: int) -> dict[str, float]:
        if eval_batches is None:
            return {}
        batches_ = eval_batches()
        eval_hook = getattr(run.stage, "eval_batches", None)
        if eval_hook is not None:  # e.g. reference log-probs for the eval pairs
            batches_ = eval_hook(run, iter(batches_), lambda: run.combine(state.params, frozen))
        metrics = evaluate(run, eval_step, state.params, frozen, batches_)
        evals[step] = metrics
        if metrics:
            progress.message(
                f"eval at step {step}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "eval_loss_tokens")
            )
        return metrics

    def finish(pending: tuple | None) -> None:
        """Read back the metrics of a dispatched step; log; stop on a non-finite loss."""
        if pending is None:
            return
        step, metrics, tokens = pending
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not values.pop("finite", 1.0):
            ckpt.wait()
            kept = (
                f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                if last_saved is not None
                else "no checkpoint was written yet"
            )
            raise NonFiniteLoss(
                f"step {step}: the loss is {values['loss']} (gradient norm "
                f"{values['grad_norm']}); training stopped before applying that update, {kept}. "
                "Lower optim.lr, check the data of that step, or use float32 / clipping."
            )
        losses[step] = values["loss"]
        log = step % max(t.log_every, 1) == 0 or step == t.steps
        rates = progress.update(step, values["loss"], tokens, log)
        record = dict(values, **{k: v for k, v in rates.items() if math.isfinite(v)})
        is_eval = (t.eval_every > 0 and step % t.eval_every == 0) or step == t.steps
        if is_eval:
            record.update(do_eval(step))
        if log or is_eval:
            logger.log(step, record)
        for fn in STEP_HOOKS:
            fn(step, record)

    try:
        if start == 0 and t.eval_at_start:
            metrics = do_eval(0)
            if metrics:
                logger.log(0, metrics)
        pending = None
        for step in range(start + 1, t.steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                raise UserError(
                    f"the training data ran out at step {step} of {t.steps}; lower "
                    "train.steps or give more data."
                ) from None
            check_batch_ids(batch, run.model.config.vocab_size, step)
            tokens = _tokens(batch)
            state, metrics = train_step(state, frozen, sh.put_batch(batch, run.mesh, run.rules))
            finish(pending)
            pending = (step, metrics, tokens)
            save = (t.save_every > 0 and step % t.save_every == 0) or step == t.steps
            if save:
                finish(pending)
                pending = None
                data_state = batches.state() if hasattr(batches, "state") else {}
                ckpt.save(step, state, data_state, run_meta(run))
                last_saved = step
        finish(pending)
        ckpt.wait()
    finally:
        logger.close()
        with contextlib.suppress(UserError):
            ckpt.close()
    return TrainResult(state, losses, evals, last_saved, run)
