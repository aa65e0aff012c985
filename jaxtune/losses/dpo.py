"""Direct preference optimisation and its variants, on summed completion log-probs.

    out = dpo_loss(pc, pr, ref_pc, ref_pr, beta=0.1, loss_type="sigmoid")
    out.loss, out.means()["rewards/margins"]

With d = (log pi(yc) - log ref(yc)) - (log pi(yr) - log ref(yr)), per pair:

    sigmoid  -log sigmoid(beta d)                                  (Rafailov et al. 2023)
    ipo      (d' - 1 / (2 beta))^2, d' from length-averaged ratios (Azar et al. 2023; as trl)
    hinge    max(0, 1 - beta d)                                    (SLiC, Zhao et al. 2023)
    robust   (-(1-e) log s(beta d) + e log s(-beta d)) / (1 - 2e)  (rDPO, Chowdhury et al. 2024)
    cdpo     -(1-e) log s(beta d) - e log s(-beta d)               (conservative DPO, Mitchell 2023)

e is `label_smoothing`. trl 1.16's `sigmoid` ignores label_smoothing (it only reads it for
robust and a few others), so cDPO is its own loss type here, and `sigmoid` refuses a nonzero e.
Reported metrics follow trl: rewards/chosen = beta (log pi(yc) - log ref(yc)), rewards/rejected,
rewards/margins, rewards/accuracies (chosen reward > rejected reward), logps/chosen, logps/rejected.
The reference log-probs never receive gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.terms import LossTerms, mean_metric, per_unit

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "cdpo")


def check_dpo_args(loss_type: str, beta: float, label_smoothing: float) -> None:
    """Raise LossConfigError for an unknown loss type or an out-of-range beta / smoothing."""
    if loss_type not in DPO_LOSS_TYPES:
        raise LossConfigError(
            f"dpo loss_type {loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}"
        )
    if beta <= 0:
        raise LossConfigError(f"dpo beta must be > 0, got {beta}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise LossConfigError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    if loss_type == "cdpo" and not 0.0 <= label_smoothing <= 0.5:
        raise LossConfigError(f"cDPO needs 0 <= label_smoothing <= 0.5, got {label_smoothing}")
    if loss_type in ("sigmoid", "ipo", "hinge") and label_smoothing != 0.0:
        raise LossConfigError(
            f"label_smoothing={label_smoothing} has no effect on loss_type {loss_type!r}; "
            "use loss_type 'cdpo' (conservative DPO) or 'robust'"
        )


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
) -> LossTerms:
    """The DPO-family loss of a batch of pairs (see the module docstring); all inputs [B].

    *_logps are completion log-probs summed over tokens (`sequence_logps`); `ipo` also needs the
    completion lengths in tokens (`loss_mask.sum(-1)`), by which trl averages the log-ratios."""
    check_dpo_args(loss_type, beta, label_smoothing)
    f32 = jnp.float32
    chosen_logps = chosen_logps.astype(f32)
    rejected_logps = rejected_logps.astype(f32)
    ref_chosen = jax.lax.stop_gradient(ref_chosen_logps.astype(f32))
    ref_rejected = jax.lax.stop_gradient(ref_rejected_logps.astype(f32))
    chosen_ratio = chosen_logps - ref_chosen
    rejected_ratio = rejected_logps - ref_rejected
    d = chosen_ratio - rejected_ratio
    e = label_smoothing
    if loss_type == "sigmoid":
        losses = -jax.nn.log_sigmoid(beta * d)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - beta * d)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo needs chosen_lengths and rejected_lengths (completion tokens)")
        avg_c = chosen_ratio / jnp.maximum(chosen_lengths.astype(f32), 1.0)
        avg_r = rejected_ratio / jnp.maximum(rejected_lengths.astype(f32), 1.0)
        losses = (avg_c - avg_r - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "robust":
        clean = -(1.0 - e) * jax.nn.log_sigmoid(beta * d)
        flipped = -e * jax.nn.log_sigmoid(-beta * d)
        losses = (clean - flipped) / (1.0 - 2.0 * e)
    else:  # cdpo
        losses = -(1.0 - e) * jax.nn.log_sigmoid(beta * d) - e * jax.nn.log_sigmoid(-beta * d)
    return per_unit(
        losses,
        preference_metrics(
            beta * chosen_ratio, beta * rejected_ratio, chosen_logps, rejected_logps
        ),
    )


def preference_metrics(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """trl's reported metrics for a batch of pairs, as (sum, count) without gradients."""
    metrics = {
        "rewards/chosen": mean_metric(chosen_rewards),
        "rewards/rejected": mean_metric(rejected_rewards),
        "rewards/accuracies": mean_metric(chosen_rewards > rejected_rewards),
        "rewards/margins": mean_metric(chosen_rewards - rejected_rewards),
        "logps/chosen": mean_metric(chosen_logps),
        "logps/rejected": mean_metric(rejected_logps),
    }
    return jax.lax.stop_gradient(metrics)
