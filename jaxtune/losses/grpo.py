"""GRPO: group relative policy optimisation (Shao et al. 2024), as trl's GRPOTrainer computes it.

k completions are sampled per prompt, rows grouped consecutively ([p0 x k, p1 x k, ...]).

    adv = group_advantages(rewards, k)                        # [B], no value model
    out = grpo_loss(logprobs, old_logprobs, ref_logprobs, adv, mask, beta=0.04)

Advantage of completion i in its group: (r_i - mean(r_group)) / (std(r_group) + eps), std with
Bessel's correction as trl (`scale="batch"` uses the whole batch's std, `"none"` only centres).
Per token: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta * k3(pi, ref), with
rho = pi / pi_old and k3 = exp(l) - l - 1, l = log ref - log pi. Reduction (`loss_type`):

    grpo     mean over sequences of the mean over each sequence's tokens (the paper's 1/|o_i|)
    bnpo     mean over all tokens of the batch
    dr_grpo  sum over tokens / (B * max_completion_length)             (Liu et al. 2025)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.ppo import kl_penalty
from jaxtune.losses.terms import LossTerms, mean_metric

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: jax.Array, group_size: int, *, scale: str = "group", eps: float = 1e-4
) -> jax.Array:
    """Group-normalised advantages [B] of rewards [B] (B a multiple of group_size)."""
    if scale not in SCALES:
        raise LossConfigError(f"grpo scale_rewards {scale!r} is not one of {', '.join(SCALES)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise LossConfigError(
            f"grpo needs the batch ({rewards.shape[0]} rows) to be whole groups of {group_size}"
        )
    r = rewards.astype(jnp.float32)
    groups = r.reshape(-1, group_size)
    centred = (groups - groups.mean(axis=1, keepdims=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = jnp.std(groups, axis=1, ddof=1) if group_size > 1 else jnp.zeros(groups.shape[0])
        std = jnp.repeat(std, group_size)
    else:
        std = jnp.std(r, ddof=1) if r.shape[0] > 1 else jnp.zeros(())
    return centred / (std + eps)


def grpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array | None,
    ref_logprobs: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    beta: float = 0.04,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> LossTerms:
    """GRPO loss (see the module docstring). logprobs, old_logprobs, ref_logprobs, mask [B, T];
    advantages [B] (or [B, T]). old_logprobs None means one update per rollout (rho = 1 with
    the gradient of log pi); ref_logprobs may be None when beta is 0.
    Metrics: kl (mean per-token k3), clip_ratio (tokens where the clip is active: ratio below
    1 - epsilon with A < 0, or above 1 + epsilon_high with A > 0, as trl counts)."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise LossConfigError(
            f"grpo loss_type {loss_type!r} is not one of {', '.join(GRPO_LOSS_TYPES)}"
        )
    if beta and ref_logprobs is None:
        raise LossConfigError("grpo with beta > 0 needs the reference log-probs")
    mask = mask.astype(jnp.float32)
    logprobs = logprobs.astype(jnp.float32)
    old = jax.lax.stop_gradient(logprobs if old_logprobs is None else old_logprobs)
    adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
    if adv.ndim == 1:
        adv = adv[:, None]
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = jnp.exp(logprobs - old)
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + high)
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    low = (ratio < 1.0 - epsilon) & (adv < 0)
    high_hit = (ratio > 1.0 + high) & (adv > 0)
    metrics = {"clip_ratio": mean_metric(low | high_hit, mask)}
    if beta:
        kl = kl_penalty(logprobs, jax.lax.stop_gradient(ref_logprobs), "k3")
        per_token = per_token + beta * kl
        metrics["kl"] = mean_metric(kl, mask)
    metrics = jax.lax.stop_gradient(metrics)
    b = jnp.asarray(mask.shape[0], jnp.float32)
    if loss_type == "grpo":
        per_seq = jnp.sum(per_token * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
        return LossTerms(jnp.sum(per_seq), b, metrics)
    if loss_type == "bnpo":
        return LossTerms(jnp.sum(per_token * mask), jnp.sum(mask), metrics)
    length = mask.shape[1] if max_completion_length is None else max_completion_length
    return LossTerms(jnp.sum(per_token * mask) / length, b, metrics)
