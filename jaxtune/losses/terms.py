"""What the preference and RL losses return: sums and counts, so micro-batches add up.

    out = jaxtune.losses.dpo_loss(...)
    out.loss            # total / weight: the batch loss as trl defines it
    out.means()         # {"rewards/chosen": ..., ...}: each metric's sum / count

A train stage passes `(out.total, out.weight, out.metrics)` on as its loss output: the loop adds
totals, weights and metric (sum, count) pairs over micro-batches and devices, then divides.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Metric = tuple[jax.Array, jax.Array]  # (sum, count)


class LossTerms(NamedTuple):
    """total: sum of the per-unit losses; weight: number of units (pairs, sequences or tokens);
    metrics: name -> (sum, count), reported as sum / count."""

    total: jax.Array
    weight: jax.Array
    metrics: dict[str, Metric]

    @property
    def loss(self) -> jax.Array:
        """total / weight (0 when the weight is 0)."""
        return jnp.where(self.weight > 0, self.total / jnp.maximum(self.weight, 1e-12), 0.0)

    def means(self) -> dict[str, jax.Array]:
        """Each metric's sum / count (0 when its count is 0)."""
        return {k: s / jnp.maximum(c, 1e-12) for k, (s, c) in self.metrics.items()}


def mean_metric(values: jax.Array, mask: jax.Array | None = None) -> Metric:
    """(sum, count) of `values` over the entries where `mask` is nonzero (all when None)."""
    values = jnp.asarray(values, jnp.float32)
    if mask is None:
        return jnp.sum(values), jnp.asarray(values.size, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(values * mask), jnp.sum(mask)


def per_unit(losses: jax.Array, metrics: dict[str, Metric]) -> LossTerms:
    """LossTerms of a vector of per-unit losses (their mean is the loss)."""
    losses = jnp.asarray(losses, jnp.float32)
    return LossTerms(jnp.sum(losses), jnp.asarray(losses.size, jnp.float32), metrics)
