"""Bytes of a pytree of arrays (or of `jax.eval_shape` structs): optimizer-state accounting."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def tree_bytes(tree: Any) -> int:
    """Sum of size x itemsize over the array leaves of `tree` (exact, nothing allocated)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def state_bytes(optimizer: Any, params: Any) -> int:
    """Bytes of `optimizer.init(params)` without allocating it."""
    return tree_bytes(jax.eval_shape(optimizer.init, params))
