"""Completion log-probs of the preference stages, and their per-pair losses over real pairs.

    logps = pair_logps(model, params, batch, chunk=1024)     # chosen and rejected in one pass
    out = masked_terms(lambda c, r: simpo_loss(c / nc, r / nr), logps.valid, ...)   # LossOutput

Units: a row of a preference batch may hold several pairs (data.packing; segment s of the
chosen row and segment s of the rejected row are one pair), and the last batch of an eval pass
has padding rows. Every per-unit array here is [B, T]: column s-1 holds segment s of the row
(T is an upper bound on the segments of a row), and `valid` marks the columns that are a pair.
A loss of jaxtune.losses (a pure function of [U] vectors) runs once per unit under `vmap`, and
the sums of its total, weight and metrics over the valid units are the stage's LossOutput, so
a batch without padding gives exactly the pure function's result on its pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtune.losses import chunked_token_logps, concat_pairs, split_pairs, token_logps
from jaxtune.losses.terms import LossTerms
from jaxtune.train.stages import LossOutput
from jaxtune.train.stages.sft import model_inputs

Params = Any
Batch = Mapping[str, jax.Array]
LM_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


class PairLogps(NamedTuple):
    """Summed completion log-probs and completion lengths per unit, all [B, T] fp32."""

    chosen: jax.Array
    rejected: jax.Array
    chosen_len: jax.Array
    rejected_len: jax.Array

    @property
    def valid(self) -> jax.Array:
        return (self.chosen_len > 0) & (self.rejected_len > 0)


def sequences(batch: Batch, prefix: str = "") -> dict[str, jax.Array]:
    """The LM keys of one sequence of a batch (`prefix` = "chosen_", "kl_", ...)."""
    return {k: batch[prefix + k] for k in LM_KEYS}


def token_logps_of(model: Any, params: Params, seq: Batch, chunk: int = 0) -> jax.Array:
    """log p(targets[t]) [N, T] fp32 on the loss mask (0 elsewhere); chunk > 0 runs the LM head
    that many tokens at a time (no [N, T, V] logits)."""
    hidden, _ = model.hidden_states(params, seq["input_ids"], **model_inputs(seq))
    if chunk > 0:
        logits_fn = lambda h: model.logits(params, h)
        return chunked_token_logps(
            hidden, logits_fn, seq["targets"], seq["loss_mask"], chunk_size=chunk
        )
    return token_logps(model.logits(params, hidden), seq["targets"], seq["loss_mask"])


def segment_sums(values: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array):
    """(sums, counts) [N, T] of `values` [N, T] over the masked tokens of each segment."""
    n, t = values.shape
    mask = loss_mask.astype(jnp.float32)
    slot = jnp.clip(segment_ids - 1, 0, t - 1) + t * jnp.arange(n)[:, None]
    keep = (segment_ids > 0).astype(jnp.float32) * mask
    sums = jax.ops.segment_sum((values * keep).reshape(-1), slot.reshape(-1), num_segments=n * t)
    counts = jax.ops.segment_sum(keep.reshape(-1), slot.reshape(-1), num_segments=n * t)
    return sums.reshape(n, t), counts.reshape(n, t)


def sequence_totals(model: Any, params: Params, seq: Batch, chunk: int = 0):
    """(summed completion log-probs, completion lengths) [N, T] per segment of `seq`."""
    tok = token_logps_of(model, params, seq, chunk)
    return segment_sums(tok, seq["loss_mask"], seq["segment_ids"])


def pair_logps(model: Any, params: Params, batch: Batch, chunk: int = 0) -> PairLogps:
    """Chosen and rejected through the model as one [2B, T] batch (see the module docstring)."""
    cat = concat_pairs({p + k: batch[p + k] for p in ("chosen_", "rejected_") for k in LM_KEYS})
    sums, counts = sequence_totals(model, params, cat, chunk)
    (chosen, rejected), (chosen_len, rejected_len) = split_pairs(sums), split_pairs(counts)
    return PairLogps(chosen, rejected, chosen_len, rejected_len)


def masked_terms(fn: Callable[..., LossTerms], valid: jax.Array, *units: jax.Array) -> LossOutput:
    """Sum of `fn`'s LossTerms over the valid units; fn takes [1]-vectors, one per unit array."""
    flat = [u.reshape(-1, 1) for u in units]
    terms = jax.vmap(fn)(*flat)
    w = valid.reshape(-1).astype(jnp.float32)
    metrics = {
        name: (jnp.sum(total * w), jnp.sum(count * w))
        for name, (total, count) in terms.metrics.items()
    }
    return LossOutput(jnp.sum(terms.total * w), jnp.sum(terms.weight * w), metrics)


def mean_logps(sums: jax.Array, lengths: jax.Array, valid: jax.Array) -> jax.Array:
    """Average log-prob per completion token of each unit; -1 where the unit is not a pair
    (finite values and gradients there: they are masked out of every sum)."""
    return jnp.where(valid, sums / jnp.where(valid, lengths, 1.0), -1.0)


def mean_pair_logps(
    model: Any, params: Params, batch: Batch, chunk: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(chosen, rejected, valid): the length-normalised log-probs of each pair's completions
    (ORPO, SimPO), from one concatenated pass."""
    logps = pair_logps(model, params, batch, chunk)
    valid = logps.valid
    chosen = mean_logps(logps.chosen, logps.chosen_len, valid)
    rejected = mean_logps(logps.rejected, logps.rejected_len, valid)
    return chosen, rejected, valid
