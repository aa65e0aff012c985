"""KTO: Kahneman-Tversky optimisation on unpaired desirable / undesirable completions
(Ethayarajh et al. 2024), as trl's KTOTrainer computes it.

    kl = kto_kl(policy_logps_on_mismatched, ref_logps_on_mismatched)   # scalar, no gradient
    out = kto_loss(policy_logps, ref_logps, batch["kto_label"], kl, beta=0.1)

With r = log pi(y|x) - log ref(y|x) (summed over the completion) and the reference point z0 = kl:

    desirable    w_d * (1 - sigmoid(beta (r - z0)))
    undesirable  w_u * (1 - sigmoid(beta (z0 - r)))

and the loss is the mean over all rows. z0 estimates KL(pi || ref) from the same batch on
mismatched pairs, prompt i with the completion of row i-1 (`mismatched_rows` builds them):
max(0, mean(log pi - log ref)), detached. Metrics as trl: rewards/chosen (mean of beta r over
desirable rows), rewards/rejected, rewards/margins, logps/chosen, logps/rejected, kl.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.terms import LossTerms, mean_metric, per_unit


def kto_kl(policy_logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """KTO's reference point: max(0, mean(policy - ref)) over mismatched pairs, no gradient."""
    kl = jnp.mean(policy_logps.astype(jnp.float32) - ref_logps.astype(jnp.float32))
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def kto_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    labels: jax.Array,
    kl: jax.Array,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossTerms:
    """KTO loss of a batch; logps [B] summed over the completion, labels [B] (1 = desirable)."""
    if beta <= 0:
        raise LossConfigError(f"kto beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise LossConfigError("kto desirable_weight and undesirable_weight must be >= 0")
    policy_logps = policy_logps.astype(jnp.float32)
    ratio = policy_logps - jax.lax.stop_gradient(ref_logps.astype(jnp.float32))
    kl = jax.lax.stop_gradient(jnp.asarray(kl, jnp.float32))
    good = jnp.asarray(labels).astype(bool)
    losses = jnp.where(
        good,
        desirable_weight * (1.0 - jax.nn.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (kl - ratio))),
    )
    rewards = beta * ratio
    bad = ~good
    chosen = mean_metric(rewards, good)
    rejected = mean_metric(rewards, bad)
    both = (chosen[1] > 0) & (rejected[1] > 0)
    margin = chosen[0] / jnp.maximum(chosen[1], 1.0) - rejected[0] / jnp.maximum(rejected[1], 1.0)
    metrics = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": (jnp.where(both, margin, 0.0), both.astype(jnp.float32)),
        "logps/chosen": mean_metric(policy_logps, good),
        "logps/rejected": mean_metric(policy_logps, bad),
        "kl": (kl, jnp.asarray(1.0, jnp.float32)),
    }
    return per_unit(losses, jax.lax.stop_gradient(metrics))


def mismatched_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The KL rows of a KTO batch: prompt i followed by the completion of row i-1.

    `batch` follows the batch contract, one right-padded sequence per row (no packing): the
    prompt is the tokens before the first completion token (`loss_mask` marks the positions
    that predict completion tokens). Returns `input_ids`, `targets`, `loss_mask`, `segment_ids`,
    `positions` of the same shape [B, T]; a row that no longer fits is truncated at T."""
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["loss_mask"]) > 0
    b, t = ids.shape
    lengths = (np.asarray(batch["segment_ids"]) > 0).sum(-1)
    prompts, completions = [], []
    for i in range(b):
        first = int(np.argmax(mask[i])) + 1 if mask[i].any() else int(lengths[i])
        prompts.append(ids[i, :first])
        completions.append(ids[i, first : int(lengths[i])])
    out = {
        "input_ids": np.zeros((b, t), ids.dtype),
        "targets": np.zeros((b, t), ids.dtype),
        "loss_mask": np.zeros((b, t), np.float32),
        "segment_ids": np.zeros((b, t), np.int32),
        "positions": np.zeros((b, t), np.int32),
    }
    for i in range(b):
        prompt, completion = prompts[i], completions[i - 1]
        row = np.concatenate([prompt, completion])[:t]
        n = len(row)
        out["input_ids"][i, :n] = row
        out["targets"][i, : n - 1] = row[1:]
        out["loss_mask"][i, len(prompt) - 1 : n - 1] = 1.0
        out["segment_ids"][i, :n] = 1
        out["positions"][i, :n] = np.arange(n)
    return out
