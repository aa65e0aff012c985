"""Stage `grpo`: group relative policy optimisation (Shao et al. 2024), no critic.

    jaxtune train --config=configs/grpo_lora.py

Per rollout: `train.batch_size` prompts, each sampled `grpo.num_generations` times (rows of a
group consecutive) -> scores from `grpo.reward_fn` (verifiable Python rewards: `exact_match`
against the set's `answer`, `format`, or a dotted path) and/or `grpo.reward_model` ->
group-normalised advantages (r - mean(group)) / (std(group) + eps) -> per token
-min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta * k3 KL to the reference
(adapters disabled, or a frozen copy), reduced per `loss_type` (jaxtune.losses.grpo, as trl).
With ppo_epochs = num_minibatches = 1 the update is on-policy (rho = 1, trl's default); else the
rollout's log-probs are kept as pi_old.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtune.errors import UserError
from jaxtune.losses.grpo import GRPO_LOSS_TYPES, SCALES, grpo_loss
from jaxtune.losses.ppo import kl_penalty
from jaxtune.rl import advantages as adv_lib
from jaxtune.rl.driver import rollout_batches
from jaxtune.rl.sequences import response_hidden, response_logps
from jaxtune.rl.settings import RolloutSettings, check_run_config, shared_defaults
from jaxtune.rl.stats import stat_metrics
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "grpo"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            shared_defaults(),
            num_generations=4,  # k samples per prompt (the group)
            beta=0.04,  # weight of the k3 KL to the reference (0: no reference pass)
            epsilon=0.2,  # lower clip of the ratio
            epsilon_high=0.0,  # upper clip (0 = epsilon; DAPO uses 0.28)
            loss_type="grpo",  # grpo | bnpo | dr_grpo
            scale_rewards="group",  # group | batch | none
        )
    )


@dataclasses.dataclass(frozen=True)
class GRPOStage:
    settings: RolloutSettings
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    loss_chunk: int = 1024
    name: str = "grpo"

    @property
    def off_policy(self) -> bool:
        """Whether a rollout is trained on more than once (then pi_old is kept)."""
        return self.settings.steps_per_rollout() > 1

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    def train_batches(
        self, run: Any, batches: Iterator[Batch], current_params: Callable[[], Params]
    ) -> Iterator[dict[str, np.ndarray]]:
        return rollout_batches(self, run, batches, current_params)

    def init_state(self) -> dict[str, Any]:
        return {}

    def prepare(self, run, params, ref_params, seq, scores, state):
        arrays, metrics = jax.device_get(_prepare(self, run.model, params, ref_params, seq, scores))
        numbers = {k: float(v) for k, v in metrics.items()}
        return {k: np.asarray(v) for k, v in arrays.items()}, numbers, state

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        hidden = response_hidden(model, params, batch)
        logps = response_logps(
            model,
            params,
            hidden,
            batch,
            temperature=self.settings.temperature,
            chunk_size=self.loss_chunk,
        )
        out = grpo_loss(
            logps,
            batch.get("old_logprobs"),
            batch.get("ref_logprobs"),
            batch["advantages"],
            batch["response_mask"],
            beta=self.beta,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            loss_type=self.loss_type,
            max_completion_length=self.settings.max_new_tokens,
        )
        return LossOutput(out.total, out.weight, {**out.metrics, **stat_metrics(batch)})


@functools.partial(jax.jit, static_argnames=("stage", "model"))
def _prepare(
    stage: GRPOStage,
    model: Any,
    params: Params,
    ref_params: Params,
    seq: dict[str, jax.Array],
    scores: jax.Array,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Group advantages; pi_old log-probs when off-policy; reference log-probs when beta > 0."""
    kw = dict(temperature=stage.settings.temperature, chunk_size=stage.loss_chunk)
    adv, metrics = adv_lib.grpo_targets(
        scores, stage.settings.group_size, scale=stage.scale_rewards
    )
    arrays = {"advantages": adv}
    logps = None
    if stage.off_policy or stage.beta:
        logps = response_logps(model, params, response_hidden(model, params, seq), seq, **kw)
    if stage.off_policy:
        arrays["old_logprobs"] = logps
    if stage.beta:
        ref = response_logps(model, ref_params, response_hidden(model, ref_params, seq), seq, **kw)
        arrays["ref_logprobs"] = ref
        kl = kl_penalty(logps, ref, "k3") * seq["response_mask"]
        metrics["kl"] = jnp.mean(jnp.sum(kl, -1))  # per sequence
    return arrays, metrics


def make_stage(config: Any) -> GRPOStage:
    c = config.grpo
    check_run_config(config, "grpo")
    if c.loss_type not in GRPO_LOSS_TYPES:
        raise UserError(f"config.grpo.loss_type={c.loss_type!r}: one of {GRPO_LOSS_TYPES}.")
    if c.scale_rewards not in SCALES:
        raise UserError(f"config.grpo.scale_rewards={c.scale_rewards!r}: one of {SCALES}.")
    if int(c.num_generations) < 2:
        raise UserError(
            f"config.grpo.num_generations={c.num_generations}: a group needs >= 2 samples "
            "(advantages are relative to the group)."
        )
    chunk = int(config.train.loss_chunk)
    return GRPOStage(
        settings=RolloutSettings.from_config(c, group_size=int(c.num_generations), section="grpo"),
        beta=float(c.beta),
        epsilon=float(c.epsilon),
        epsilon_high=float(c.epsilon_high) if float(c.epsilon_high) > 0 else None,
        loss_type=str(c.loss_type),
        scale_rewards=str(c.scale_rewards),
        loss_chunk=chunk if chunk > 0 else 1 << 30,
    )
