"""From a scored rollout to the quantities the clipped losses train on (pure functions).

PPO (InstructGPT; Ziegler et al. 2019):
    kl_t      = KL estimate of pi vs the reference on each response token
    r_t       = -kl_coef * kl_t, plus the score on the last response token
    A, R      = GAE(r, V; gamma, lambda), R = A + V;  A whitened over the rollout's tokens
GRPO (Shao et al. 2024): A_i = (r_i - mean(group)) / (std(group) + eps), no critic.

The formulas are jaxtune.losses.ppo / jaxtune.losses.grpo (tested against numpy there); this
module only composes them and reports rollout metrics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.grpo import group_advantages
from jaxtune.losses.ppo import (
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    token_rewards,
)


def ppo_targets(
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    values: jax.Array,
    scores: jax.Array,
    mask: jax.Array,
    *,
    kl_coef: jax.Array | float,
    gamma: float,
    lam: float,
    estimator: str = "k1",
    whiten: bool = True,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({advantages, returns} [B, N], metrics) of a rollout; arrays [B, N], scores [B]."""
    logprobs, ref_logprobs, values, scores = map(
        jnp.asarray, (logprobs, ref_logprobs, values, scores)
    )
    mask = jnp.asarray(mask, jnp.float32)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask
    rewards = token_rewards(scores, kl, mask, kl_coef)
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten:
        adv = masked_whiten(adv, mask)
    seq_kl = jnp.sum(kl, axis=-1)
    metrics = {
        "kl": jnp.mean(seq_kl),  # per sequence: what the adaptive controller targets
        "kl_per_token": masked_mean(kl, mask),
        "non_score_reward": jnp.mean(-kl_coef * seq_kl),
        "value/explained_variance": explained_variance(values, returns, mask),
        "value/returns_mean": masked_mean(returns, mask),
    }
    return {"advantages": adv, "returns": returns}, metrics


def grpo_targets(
    scores: jax.Array, group_size: int, *, scale: str = "group"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(advantages [B], metrics) of a GRPO rollout (rows of a group consecutive)."""
    scores = jnp.asarray(scores, jnp.float32)
    adv = group_advantages(scores, group_size, scale=scale)
    groups = scores.reshape(-1, group_size)
    metrics = {
        "reward/group_std": jnp.mean(jnp.std(groups, axis=1)),
        "frac_zero_std_groups": jnp.mean(jnp.std(groups, axis=1) == 0),
    }
    return adv, metrics
