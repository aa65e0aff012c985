"""The rollout loop behind `Stage.train_batches` of the `ppo` and `grpo` stages.

    for each prompt batch of the data worker:
        params = current_params()                          (waits for the last step)
        rollout = sample(policy)                           compiled generate         time/generation
        scores = rewards(decoded text, columns, ids)       Python / reward model     time/reward
        arrays, stats, state = stage.prepare(...)          compiled forward passes   time/prepare
        yield the train batches of ppo_epochs x num_minibatches               time/train (next)

`time/train` is the wall time the previous rollout's minibatch steps took (from its first
batch until the new policy is ready), reported with the next rollout. The stage's `prepare` is a
pure compiled function plus a small host state (PPO's KL coefficient).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import numpy as np

from jaxtune.generate.text import pad_id_for, stop_ids
from jaxtune.rl import minibatches, rollout, sequences, stats
from jaxtune.rl.rewards import RewardSource
from jaxtune.rl.settings import RolloutSettings
from jaxtune.rl.value_head import drop_value_head
from jaxtune.train.reference import Reference


class RolloutStage(Protocol):
    settings: RolloutSettings

    def init_state(self) -> dict[str, Any]: ...

    def prepare(
        self,
        run: Any,
        params: Any,
        ref_params: Any,
        seq: dict[str, np.ndarray],
        scores: np.ndarray,
        state: dict[str, Any],
    ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]: ...


def rollout_batches(
    stage: RolloutStage,
    run: Any,
    batches: Iterator[dict],
    current_params: Callable[[], Any],
) -> Iterator[dict[str, np.ndarray]]:
    """The train batches of a rollout stage (see the module docstring)."""
    from jaxtune.sharding import use_mesh

    settings = stage.settings
    tokenizer = run.tokenizer
    eos, pad = stop_ids(run.model, tokenizer), pad_id_for(run.model, tokenizer)
    rewards = RewardSource.create(settings, tokenizer, eos)
    reference = Reference.for_run(run, strip=drop_value_head)  # adapters off, or a copy
    seed = int(run.config.seed)
    host_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed + 1)
    state = stage.init_state()
    train_time, last_end = 0.0, None
    for index, prompts in enumerate(batches):
        params = current_params()
        jax.block_until_ready(params)
        if last_end is not None:
            train_time = time.perf_counter() - last_end
        ref_params = reference.params(params)
        with use_mesh(run.mesh, run.rules):
            t0 = time.perf_counter()
            out = rollout.sample(
                run.model,
                params,
                prompts,
                settings,
                eos_ids=eos,
                pad_id=pad,
                rng=jax.random.fold_in(key, index),
            )
            t1 = time.perf_counter()
            prompt_texts = rollout.decode(tokenizer, out.prompt_ids, out.prompt_mask)
            completions = rollout.decode(tokenizer, out.tokens, out.mask)
            scores, parts = rewards(out, prompt_texts, completions)
            if settings.missing_eos_penalty:
                scores = scores - settings.missing_eos_penalty * (~out.finished)
            t2 = time.perf_counter()
            seq = sequences.join(out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
            arrays, prepared, state = stage.prepare(run, params, ref_params, seq, scores, state)
            t3 = time.perf_counter()
        del params, ref_params  # the next step donates the policy's buffers
        rows = len(scores)
        numbers = {
            **stats.response_stats(out.lengths, out.finished, scores),
            **parts,
            **prepared,
            "time/generation_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/prepare_s": t3 - t2,
            "time/train_s": train_time,
            "generated_tokens_per_s": float(out.lengths.sum()) / max(t1 - t0, 1e-9),
        }
        train = {**seq, **arrays, **stats.stat_columns(numbers, rows)}
        last_end = time.perf_counter()
        yield from minibatches.epochs(
            train,
            epochs=settings.epochs,
            num_minibatches=settings.num_minibatches,
            rng=host_rng,
            where=settings.section,
        )
