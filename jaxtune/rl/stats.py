"""Rollout metrics through the train loop: carried as constant per-row batch columns.

The loop logs what a stage's loss returns, and a rollout happens outside the step. So the rollout
stats (reward mean/std, KL, response length, generation time, ...) ride in the train batches as
`rollout/<name>` columns of [rows] float32 copies of one number; the loss reports each as
(sum, rows), i.e. the number itself, on every step that trains on that rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "rollout/"


def stat_columns(stats: Mapping[str, float], rows: int) -> dict[str, np.ndarray]:
    return {PREFIX + k: np.full((rows,), float(v), np.float32) for k, v in stats.items()}


def stat_metrics(batch: Mapping[str, Any]) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{name: (sum, count)} of the batch's rollout columns (reported as the number itself)."""
    out = {}
    for key, value in batch.items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX) :]] = (
                jnp.sum(value),
                jnp.asarray(value.shape[0], jnp.float32),
            )
    return out


def response_stats(lengths: np.ndarray, finished: np.ndarray, scores: np.ndarray) -> dict:
    return {
        "reward_mean": float(np.mean(scores)),
        "reward_std": float(np.std(scores)),
        "response_length": float(np.mean(lengths)),
        "eos_fraction": float(np.mean(finished)),
    }
