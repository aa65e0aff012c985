"""SimPO: simple preference optimisation with a length-normalised reward (Meng et al. 2024).

    avg = sequence_logps(logits, targets, loss_mask, average=True)
    out = simpo_loss(*split_pairs(avg), beta=2.0, gamma=1.0)

Per pair, with h = beta * (avg log pi(yc) - avg log pi(yr)) - gamma (no reference model):
`-(1-e) log sigmoid(h) - e log sigmoid(-h)`, e = label_smoothing; that is trl's
`CPOTrainer.cpo_loss` with loss_type "simpo" (simpo_gamma = gamma). `sft_weight` adds
`sft_weight * chosen_nll` (trl's cpo_alpha, CPO-SimPO; 0 is plain SimPO). Metrics as trl:
rewards/* = beta * average log-prob, margins, accuracies, logps/*.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.dpo import preference_metrics
from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.terms import LossTerms, mean_metric, per_unit


def simpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    chosen_nll: jax.Array | None = None,
    sft_weight: float = 0.0,
) -> LossTerms:
    """SimPO loss of a batch of pairs; *_logps [B] are *average* per-token completion log-probs."""
    if beta <= 0:
        raise LossConfigError(f"simpo beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise LossConfigError(f"simpo label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if sft_weight and chosen_nll is None:
        raise LossConfigError("simpo sft_weight > 0 needs chosen_nll (the chosen rows' LM loss)")
    chosen_logps = chosen_logps.astype(jnp.float32)
    rejected_logps = rejected_logps.astype(jnp.float32)
    h = beta * (chosen_logps - rejected_logps) - gamma
    e = label_smoothing
    losses = -(1.0 - e) * jax.nn.log_sigmoid(h) - e * jax.nn.log_sigmoid(-h)
    metrics = preference_metrics(
        beta * chosen_logps, beta * rejected_logps, chosen_logps, rejected_logps
    )
    if chosen_nll is not None:
        nll = jnp.broadcast_to(jnp.asarray(chosen_nll, jnp.float32), losses.shape)
        losses = losses + sft_weight * nll
        metrics["nll_loss"] = jax.lax.stop_gradient(mean_metric(nll))
    return per_unit(losses, metrics)
