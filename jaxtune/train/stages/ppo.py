"""Stage `ppo`: RLHF with PPO (Ouyang et al. 2022), the third step of the InstructGPT pipeline.

    jaxtune train --config=configs/ppo_lora.py --config.ppo.reward_model=runs/rm/exported

Per rollout (jaxtune.rl.driver): `train.batch_size` prompts -> responses sampled from the
policy (compiled KV-cache sampler, `ppo.max_new_tokens` at most) -> scores from `ppo.reward_fn`
and/or `ppo.reward_model` (minus `missing_eos_penalty` when a response never ends) -> old
log-probs, values (a value head on the policy's backbone, or with `critic="separate"` on a
copy of it) and reference log-probs (adapters
disabled, or a frozen copy) -> per-token KL penalty `kl_coef * KL` with the score on the last
token -> GAE (`gamma`, `lam`) -> whitened advantages. Then `ppo_epochs` passes of
`num_minibatches` optimizer steps minimise

    clipped policy loss + vf_coef * clipped value loss - entropy_coef * entropy

(jaxtune.losses.ppo). `kl_target > 0` makes the KL coefficient adaptive (Ziegler et al. 2019).
`train.steps` counts minibatch steps: rollouts = steps / (ppo_epochs * num_minibatches).
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
from jaxtune.losses.ppo import KL_ESTIMATORS, KLController, policy_loss, value_loss
from jaxtune.rl import advantages as adv_lib
from jaxtune.rl.driver import rollout_batches
from jaxtune.rl.sequences import response_hidden, response_logps
from jaxtune.rl.settings import RolloutSettings, check_run_config, shared_defaults
from jaxtune.rl.stats import stat_metrics
from jaxtune.rl.value_head import add_value_head, critic_params, drop_value_head, head_values
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "ppo"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            shared_defaults(),
            ppo_epochs=4,  # passes over each rollout
            kl_coef=0.05,  # initial (or fixed) coefficient of the per-token KL penalty
            kl_target=0.0,  # > 0: adaptive coefficient towards this per-sequence KL
            kl_horizon=10000.0,  # adaptive controller's horizon (samples)
            kl_estimator="k1",  # k1 (log ratio) | k2 | k3 (Schulman 2020)
            gamma=1.0,  # discount
            lam=0.95,  # GAE lambda
            whiten_advantages=True,
            cliprange=0.2,  # policy ratio clip
            cliprange_value=0.2,  # value clip around the rollout's values
            vf_coef=0.1,  # weight of the value loss
            entropy_coef=0.0,  # entropy bonus
            critic="shared",  # shared: value head on the policy's backbone | separate: a copy
        )
    )


@dataclasses.dataclass(frozen=True)
class PPOStage:
    """Clipped PPO with a value head (see the module docstring). Hashable: static in jit."""

    settings: RolloutSettings
    kl: KLController = dataclasses.field(default_factory=KLController)
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    loss_chunk: int = 1024
    separate_critic: bool = False
    name: str = "ppo"

    # ------------------------------------------------------------------ params
    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return add_value_head(params, rng, model.config.hidden_size, separate=self.separate_critic)

    def export_params(self, params: Params) -> Params:
        return drop_value_head(params)

    # ------------------------------------------------------------------ rollouts
    def train_batches(
        self, run: Any, batches: Iterator[Batch], current_params: Callable[[], Params]
    ) -> Iterator[dict[str, np.ndarray]]:
        return rollout_batches(self, run, batches, current_params)

    def init_state(self) -> dict[str, Any]:
        return {"kl_coef": float(self.kl.init_coef)}

    def prepare(self, run, params, ref_params, seq, scores, state):
        coef = state["kl_coef"]
        arrays, metrics = _prepare(self, run.model, params, ref_params, seq, scores, coef)
        arrays, metrics = jax.device_get((arrays, metrics))
        new_coef = float(self.kl.update(jnp.float32(coef), metrics["kl"], n_steps=len(scores)))
        numbers = {k: float(v) for k, v in metrics.items()}
        numbers["kl_coef"] = coef
        return {k: np.asarray(v) for k, v in arrays.items()}, numbers, {"kl_coef": new_coef}

    # ------------------------------------------------------------------ loss
    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        hidden = response_hidden(model, params, batch)
        logps, entropy = response_logps(
            model,
            params,
            hidden,
            batch,
            temperature=self.settings.temperature,
            chunk_size=self.loss_chunk,
            with_entropy=True,
        )
        values = head_values(params, critic_hidden(model, params, batch, hidden))
        mask = batch["response_mask"]
        pol = policy_loss(
            logps, batch["old_logprobs"], batch["advantages"], mask, clip=self.cliprange
        )
        val = value_loss(
            values, batch["old_values"], batch["returns"], mask, clip=self.cliprange_value
        )
        ent = jnp.sum(entropy * mask)
        total = pol.total + self.vf_coef * val.total - self.entropy_coef * ent
        metrics = {
            **pol.metrics,
            **val.metrics,
            "policy/loss": (pol.total, pol.weight),
            "value/loss": (val.total, val.weight),
            "entropy": jax.lax.stop_gradient((ent, jnp.sum(mask))),
            **stat_metrics(batch),
        }
        return LossOutput(total, jnp.sum(mask), metrics)


def critic_hidden(model: Any, params: Params, batch: Batch, hidden: jax.Array) -> jax.Array:
    """The hidden states the value head reads: the policy's, or the separate critic's."""
    critic = critic_params(params)
    return hidden if critic is params else response_hidden(model, critic, batch)


@functools.partial(jax.jit, static_argnames=("stage", "model"))
def _prepare(
    stage: PPOStage,
    model: Any,
    params: Params,
    ref_params: Params,
    seq: dict[str, jax.Array],
    scores: jax.Array,
    kl_coef: jax.Array,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Old log-probs and values, reference log-probs, then advantages and returns."""
    kw = dict(temperature=stage.settings.temperature, chunk_size=stage.loss_chunk)
    hidden = response_hidden(model, params, seq)
    logps, entropy = response_logps(model, params, hidden, seq, with_entropy=True, **kw)
    values = head_values(params, critic_hidden(model, params, seq, hidden))
    ref_hidden = response_hidden(model, ref_params, seq)
    ref_logps = response_logps(model, ref_params, ref_hidden, seq, **kw)
    mask = seq["response_mask"]
    targets, metrics = adv_lib.ppo_targets(
        logps,
        ref_logps,
        values,
        scores,
        mask,
        kl_coef=kl_coef,
        gamma=stage.gamma,
        lam=stage.lam,
        estimator=stage.kl_estimator,
        whiten=stage.whiten,
    )
    m = mask.astype(jnp.float32)
    metrics["entropy"] = jnp.sum(entropy * m) / jnp.maximum(jnp.sum(m), 1.0)
    arrays = {"old_logprobs": logps, "old_values": values, **targets}
    return arrays, metrics


def make_stage(config: Any) -> PPOStage:
    c = config.ppo
    check_run_config(config, "ppo")
    if c.critic not in ("shared", "separate"):
        raise UserError(f"config.ppo.critic={c.critic!r}: 'shared' or 'separate'.")
    if c.kl_estimator not in KL_ESTIMATORS:
        raise UserError(f"config.ppo.kl_estimator={c.kl_estimator!r}: one of {KL_ESTIMATORS}.")
    target = float(c.kl_target) if float(c.kl_target) > 0 else None
    chunk = int(config.train.loss_chunk)
    return PPOStage(
        settings=RolloutSettings.from_config(c, group_size=1, section="ppo"),
        kl=KLController(float(c.kl_coef), target, float(c.kl_horizon)),
        kl_estimator=str(c.kl_estimator),
        gamma=float(c.gamma),
        lam=float(c.lam),
        whiten=bool(c.whiten_advantages),
        cliprange=float(c.cliprange),
        cliprange_value=float(c.cliprange_value),
        vf_coef=float(c.vf_coef),
        entropy_coef=float(c.entropy_coef),
        loss_chunk=chunk if chunk > 0 else 1 << 30,
        separate_critic=c.critic == "separate",
    )
