"""ORPO: odds-ratio preference optimisation without a reference model (Hong et al. 2024).

    avg = sequence_logps(logits, targets, loss_mask, average=True)   # mean log p per token
    out = orpo_loss(*split_pairs(avg), chosen_nll, beta=0.1)

With p = exp(average log-prob), odds(y) = p / (1 - p) and
log_odds = log odds(yc) - log odds(yr), the loss is `chosen_nll - beta * log sigmoid(log_odds)`
(trl's ORPOTrainer: `policy_nll_loss - odds_ratio_loss(...).mean()`). `chosen_nll` is the
language-model loss of the chosen rows, a scalar or one value per pair: trl takes the token mean
over the whole chosen sequence (prompt and completion), LlamaFactory the completion only.
Metrics are trl's: rewards/* = beta * average log-prob, log_odds_ratio = mean log sigmoid(log_odds),
log_odds_chosen = mean log_odds, nll_loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.dpo import preference_metrics
from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.terms import LossTerms, mean_metric, per_unit


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, without cancellation (branch at -log 2)."""
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    chosen_nll: jax.Array,
    *,
    beta: float = 0.1,
) -> LossTerms:
    """ORPO loss of a batch of pairs; *_logps [B] are *average* per-token completion log-probs."""
    if beta < 0:
        raise LossConfigError(f"orpo beta must be >= 0, got {beta}")
    chosen_logps = chosen_logps.astype(jnp.float32)
    rejected_logps = rejected_logps.astype(jnp.float32)
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio = jax.nn.log_sigmoid(log_odds)
    nll = jnp.broadcast_to(jnp.asarray(chosen_nll, jnp.float32), ratio.shape)
    metrics = preference_metrics(
        beta * chosen_logps, beta * rejected_logps, chosen_logps, rejected_logps
    )
    metrics |= jax.lax.stop_gradient(
        {
            "log_odds_ratio": mean_metric(ratio),
            "log_odds_chosen": mean_metric(log_odds),
            "nll_loss": mean_metric(nll),
        }
    )
    return per_unit(nll - beta * ratio, metrics)
