"""Reward models: a scalar head on the backbone and the pairwise Bradley-Terry loss.

    head = init_value_head(rng, model.config.hidden_size)      # {"kernel": (D, 1)}
    hidden, _ = model.hidden_states(params, cat["input_ids"], ...)       # (2B, T, D)
    scores = sequence_reward(head, hidden, cat["segment_ids"] > 0)       # (2B,)
    out = pairwise_loss(*split_pairs(scores))                            # -log sigmoid(rc - rr)

The score of a sequence is the head applied to the hidden state of its last non-pad token, as in
transformers' `*ForSequenceClassification` (whose `score` weight is this kernel transposed, no
bias) and trl's RewardTrainer; `value_head` gives the per-token values PPO's critic uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.losses.terms import LossTerms, mean_metric, per_unit

ValueHead = dict[str, jax.Array]  # {"kernel": (D, 1), "bias": (1,) optional}


def init_value_head(
    rng: jax.Array, dim: int, *, bias: bool = False, std: float = 0.02, dtype=jnp.float32
) -> ValueHead:
    """A fresh head: kernel ~ N(0, std^2) [D, 1] (transformers' initializer_range), bias 0."""
    head = {"kernel": (std * jax.random.normal(rng, (dim, 1))).astype(dtype)}
    if bias:
        head["bias"] = jnp.zeros((1,), dtype)
    return head


def value_head(head: ValueHead, hidden: jax.Array) -> jax.Array:
    """Per-token scalar values [B, T] fp32 from hidden states [B, T, D]."""
    kernel = head["kernel"].astype(jnp.float32)
    out = hidden.astype(jnp.float32) @ kernel  # (B, T, 1)
    if "bias" in head:
        out = out + head["bias"].astype(jnp.float32)
    return out[..., 0]


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index [B] of the last position where mask [B, T] is nonzero (right or left padding);
    transformers' rule for sequence classification. A row without tokens gives 0."""
    positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
    return jnp.argmax(jnp.where(mask > 0, positions, -1), axis=-1).astype(jnp.int32)


def gather_last(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x[b, last_token_index(mask)[b], ...] for x [B, T, ...]."""
    index = last_token_index(mask)
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def sequence_reward(head: ValueHead, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Score [B] of each sequence: the head on the hidden state of its last non-pad token."""
    return value_head(head, gather_last(hidden, mask)[:, None])[:, 0]


def pairwise_loss(
    chosen: jax.Array,
    rejected: jax.Array,
    *,
    margin: jax.Array | None = None,
    center_coef: float | None = None,
) -> LossTerms:
    """Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) per pair (trl's
    RewardTrainer), plus `center_coef * (r_chosen + r_rejected)^2` when given (trl's
    center_rewards_coefficient, which keeps rewards centred on 0).

    Metrics: accuracy (r_chosen > r_rejected), margin (r_chosen - r_rejected), and the mean,
    chosen and rejected rewards."""
    chosen = chosen.astype(jnp.float32)
    rejected = rejected.astype(jnp.float32)
    diff = chosen - rejected
    logits = diff if margin is None else diff - margin
    losses = -jax.nn.log_sigmoid(logits)
    if center_coef is not None:
        losses = losses + center_coef * (chosen + rejected) ** 2
    both = jnp.concatenate([chosen, rejected])
    metrics = {
        "accuracy": mean_metric(diff > 0),
        "margin": mean_metric(diff),
        "mean_reward": mean_metric(both),
        "rewards/chosen": mean_metric(chosen),
        "rewards/rejected": mean_metric(rejected),
    }
    return per_unit(losses, jax.lax.stop_gradient(metrics))
