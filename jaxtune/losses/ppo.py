"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022):
per-token KL-shaped rewards, GAE, whitening, the clipped policy and value losses, KL control.

All arrays are [B, T] over the response tokens (T = max response length) with `mask` [B, T]
marking real tokens (a prefix of each row); `logprobs` are log pi(token) of the sampled tokens.

    kl = kl_penalty(logprobs, ref_logprobs, "k1")                       # per token
    rewards = token_rewards(scores, kl, mask, kl_coef)                  # -coef*kl, + score at end
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    adv = masked_whiten(adv, mask)
    out = policy_loss(new_logprobs, logprobs, adv, mask, clip=0.2)      # LossTerms
    vout = value_loss(new_values, values, returns, mask, clip=0.2)
    coef = controller.update(coef, mean_kl, n_steps=batch_size)

Whitening, the clipped losses and the reported metrics follow trl's former PPOTrainer (trl 1.16
ships none, not even under experimental): `masked_whiten` with the unbiased masked variance and
eps 1e-8, losses averaged over response tokens. The score is added at the last response token,
and the padded tail gets no reward, value or advantage.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.logprobs import token_entropy
from jaxtune.losses.reward import last_token_index
from jaxtune.losses.terms import LossTerms, mean_metric

KL_ESTIMATORS = ("k1", "k2", "k3")


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Mean of x over the positions where mask is 1."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask, axis=axis) / jnp.sum(mask, axis=axis)


def masked_var(x: jax.Array, mask: jax.Array, *, unbiased: bool = True) -> jax.Array:
    """Variance of x over the masked positions (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = jnp.sum(mask.astype(jnp.float32))
        var = var * n / (n - 1.0)
    return var


def masked_whiten(
    x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the masked positions (mean kept if not shift_mean);
    masked-out positions are set to 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return jnp.where(mask > 0, white, 0.0)


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "k1") -> jax.Array:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman 2020):
    with l = log ref - log pi: k1 = -l, k2 = l^2 / 2, k3 = exp(l) - 1 - l (unbiased, >= 0)."""
    log_ratio = ref_logprobs.astype(jnp.float32) - logprobs.astype(jnp.float32)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return jnp.expm1(log_ratio) - log_ratio
    raise LossConfigError(f"kl estimator {kind!r} is not one of {', '.join(KL_ESTIMATORS)}")


def token_rewards(
    scores: jax.Array, kl: jax.Array, mask: jax.Array, kl_coef: jax.Array | float
) -> jax.Array:
    """Per-token rewards [B, T]: -kl_coef * kl on every response token, plus the sequence
    score [B] on the last one (InstructGPT's reward shaping); 0 on padding."""
    mask = mask.astype(jnp.float32)
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    return rewards.at[jnp.arange(rewards.shape[0]), last].add(scores.astype(jnp.float32))


def eos_penalty(scores: jax.Array, has_eos: jax.Array, penalty: float) -> jax.Array:
    """scores - penalty for responses that never produced EOS (trl's missing_eos_penalty)."""
    return scores - penalty * (1.0 - has_eos.astype(jnp.float32))


def contains_eos(response_ids: jax.Array, mask: jax.Array, eos_id: int | jax.Array) -> jax.Array:
    """[B] bool: whether a real token of the response is EOS (one id or an array of ids)."""
    hit = jnp.isin(response_ids, jnp.atleast_1d(jnp.asarray(eos_id)))
    return jnp.any(hit & (mask > 0), axis=-1)


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016) -> (advantages, returns) [B, T].

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V and A zero
    past the last response token; returns = A + V. Padding positions give 0."""
    mask = mask.astype(jnp.float32)
    values = values.astype(jnp.float32) * mask
    rewards = rewards.astype(jnp.float32) * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def step(carry: jax.Array, delta_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        adv = delta_t + gamma * lam * carry
        return adv, adv

    _, adv = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]), deltas.T, reverse=True)
    advantages = adv.T * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip: float = 0.2,
) -> LossTerms:
    """PPO's clipped surrogate, averaged over response tokens:
    max(-A r, -A clip(r, 1-clip, 1+clip)) with r = exp(log pi - log pi_old).
    Metrics: clipfrac (share of tokens where the clipped term wins), approxkl
    (0.5 mean (log r)^2), ratio."""
    mask = mask.astype(jnp.float32)
    advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))
    log_ratio = logprobs.astype(jnp.float32) - jax.lax.stop_gradient(old_logprobs)
    ratio = jnp.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    per_token = jnp.maximum(loss1, loss2)
    metrics = jax.lax.stop_gradient(
        {
            "policy/clipfrac": mean_metric(loss2 > loss1, mask),
            "policy/approxkl": mean_metric(0.5 * log_ratio**2, mask),
            "policy/ratio": mean_metric(ratio, mask),
        }
    )
    return LossTerms(jnp.sum(per_token * mask), jnp.sum(mask), metrics)


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip: float = 0.2,
) -> LossTerms:
    """PPO's clipped value loss, averaged over response tokens:
    0.5 max((V - R)^2, (clip(V, V_old - clip, V_old + clip) - R)^2).
    Metrics: clipfrac, mean value, explained variance is separate (`explained_variance`)."""
    mask = mask.astype(jnp.float32)
    values = values.astype(jnp.float32)
    old_values = jax.lax.stop_gradient(old_values.astype(jnp.float32))
    returns = jax.lax.stop_gradient(returns.astype(jnp.float32))
    clipped = jnp.clip(values, old_values - clip, old_values + clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    per_token = 0.5 * jnp.maximum(loss1, loss2)
    metrics = jax.lax.stop_gradient(
        {
            "value/clipfrac": mean_metric(loss2 > loss1, mask),
            "value/mean": mean_metric(values, mask),
        }
    )
    return LossTerms(jnp.sum(per_token * mask), jnp.sum(mask), metrics)


def mean_entropy(logits: jax.Array, mask: jax.Array, *, temperature: float = 1.0) -> LossTerms:
    """Mean per-token entropy of the policy over response tokens, as LossTerms (an entropy bonus
    subtracts coef * .loss); logits [B, T, V]."""
    mask = mask.astype(jnp.float32)
    ent = token_entropy(logits, temperature=temperature)
    return LossTerms(jnp.sum(ent * mask), jnp.sum(mask), {})


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var(returns - values) / Var(returns) over the masked positions (1 = perfect critic,
    0 = no better than a constant); NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns
    return jnp.where(var_returns > 0, 1.0 - ratio, jnp.nan)


@dataclasses.dataclass(frozen=True)
class KLController:
    """The KL coefficient: fixed (target None) or adaptive (Ziegler et al. 2019, eq. 2):
    e = clip(KL / target - 1, -0.2, 0.2); coef <- coef * (1 + e * n_steps / horizon).

        coef = controller.init()
        coef = controller.update(coef, mean_kl, n_steps=batch_size)   # after each rollout batch

    KL here is the mean per-sequence KL (the sum over a response of the per-token estimates).
    """

    init_coef: float = 0.05
    target: float | None = None
    horizon: float = 10_000.0

    def __post_init__(self) -> None:
        if self.init_coef < 0:
            raise LossConfigError(f"kl init_coef must be >= 0, got {self.init_coef}")
        if self.target is not None and (self.target <= 0 or self.horizon <= 0):
            raise LossConfigError("adaptive KL needs target > 0 and horizon > 0")

    def init(self) -> jax.Array:
        return jnp.asarray(self.init_coef, jnp.float32)

    def update(self, coef: jax.Array, kl: jax.Array, n_steps: int) -> jax.Array:
        """The coefficient after a batch of `n_steps` samples with mean KL `kl`."""
        if self.target is None:
            return coef
        error = jnp.clip(kl / self.target - 1.0, -0.2, 0.2)
        return coef * (1.0 + error * n_steps / self.horizon)
