"""The rollout settings the `ppo` and `grpo` config sections share, read into one frozen object.

    settings = RolloutSettings.from_config(config.ppo, group_size=1)

One rollout is one data batch of `train.batch_size` prompts, each sampled `group_size` times
(GRPO's k; 1 for PPO); its rows are then trained on for `epochs` passes of `num_minibatches`
optimizer steps each, so `train.steps` counts minibatch steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtune.errors import UserError


def check_run_config(config: Any, section: str) -> None:
    """What a rollout stage cannot do with the rest of the config (clear errors up front)."""
    if config.get("data") is not None and config.data.get("eval"):
        raise UserError(
            f"config.data.eval is set, but the {section} stage has no held-out loss (its batches "
            "are rollouts): leave data.eval empty; the rollout metrics (reward_mean, kl, ...) "
            "are logged every step."
        )
    import jax

    if jax.process_count() > 1:
        raise UserError(
            f"the {section} stage samples its rollouts on one host; multi-host runs are not "
            "supported yet (run it on one host, any number of local devices)."
        )


def shared_defaults() -> dict[str, Any]:
    """Keys both stage sections have (with their defaults)."""
    return dict(
        max_new_tokens=64,  # response length limit (tokens sampled per prompt)
        temperature=1.0,  # sampling temperature of the rollouts (> 0); log-probs use it too
        top_k=0,  # 0 = off
        top_p=1.0,  # 1.0 = off
        reward_fn="",  # built-in names (exact_match, format) or dotted paths, comma-separated
        reward_weights="",  # one weight per reward_fn entry, comma-separated ("" = all 1.0)
        reward_model="",  # a jaxtune/HF reward model directory (score added to reward_fn's)
        missing_eos_penalty=0.0,  # subtracted from the score of a response that never ends
        ppo_epochs=1,  # passes over each rollout
        num_minibatches=1,  # optimizer steps per pass (rollout rows / this = rows per step)
    )


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """How rollouts are sampled, scored and split into train batches (hashable: static in jit)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    reward_fn: str = ""
    reward_weights: str = ""
    reward_model: str = ""
    missing_eos_penalty: float = 0.0
    epochs: int = 1
    num_minibatches: int = 1
    group_size: int = 1
    section: str = "ppo"

    @classmethod
    def from_config(cls, c: Any, *, group_size: int = 1, section: str = "ppo") -> RolloutSettings:
        out = cls(
            max_new_tokens=int(c.max_new_tokens),
            temperature=float(c.temperature),
            top_k=int(c.top_k),
            top_p=float(c.top_p),
            reward_fn=str(c.reward_fn),
            reward_weights=str(c.reward_weights),
            reward_model=str(c.reward_model),
            missing_eos_penalty=float(c.missing_eos_penalty),
            epochs=int(c.ppo_epochs),
            num_minibatches=int(c.num_minibatches),
            group_size=int(group_size),
            section=section,
        )
        out.check()
        return out

    def check(self) -> None:
        s = self.section
        if self.max_new_tokens < 1:
            raise UserError(f"config.{s}.max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature <= 0:
            raise UserError(
                f"config.{s}.temperature={self.temperature}: rollouts are sampled, so it must be "
                "> 0 (the policy's log-probabilities are taken at this temperature)."
            )
        if self.epochs < 1 or self.num_minibatches < 1:
            raise UserError(f"config.{s}.ppo_epochs and num_minibatches must be >= 1.")
        if self.group_size < 1:
            raise UserError(f"config.{s}: the number of samples per prompt must be >= 1.")
        if not self.reward_fn and not self.reward_model:
            raise UserError(
                f"config.{s} has no reward: set {s}.reward_fn (e.g. 'exact_match' or "
                f"'my_module.my_reward') and/or {s}.reward_model (a reward model directory)."
            )

    def steps_per_rollout(self) -> int:
        return self.epochs * self.num_minibatches
