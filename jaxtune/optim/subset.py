"""Optimizer state for some layers of a stacked leaf only (freeze-tuning of the last N layers).

`peft.freeze` keeps a stacked (L, ...) leaf whole and trains some of its layers. Wrapping the
inner transformation with `layer_subset(inner, {path: layer_ids})` runs it on the (n, ...) slice
of those layers, so its state is n/L of the full size, and returns an update that is exactly zero
on the other layers (they stay bit-identical).

    layers/mlp/up_proj/kernel (L, D, F), layers (L-2, L-1)  ->  Adam moments (2, D, F)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.optim.labels import path_str


def _map(fn: Any, tree: Any, ids: Mapping[str, np.ndarray]) -> Any:
    def visit(kp: Any, x: Any) -> Any:
        return fn(x, ids[path_str(kp)]) if path_str(kp) in ids else x

    return jax.tree_util.tree_map_with_path(visit, tree)


def take_layers(tree: Any, ids: Mapping[str, np.ndarray]) -> Any:
    """The chosen layers of the listed leaves (the rest unchanged)."""
    return _map(lambda x, i: x[i], tree, ids)


def layer_subset(
    inner: optax.GradientTransformation, layer_ids: Mapping[str, Sequence[int]]
) -> optax.GradientTransformation:
    """`inner` on the listed layers of the listed leaves; zero update on their other layers."""
    ids = {path: np.asarray(sorted(v), np.int32) for path, v in layer_ids.items()}
    if not ids:
        return inner

    def init(params: Any) -> Any:
        return inner.init(take_layers(params, ids))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        sub_params = None if params is None else take_layers(params, ids)
        sub, state = inner.update(take_layers(updates, ids), state, sub_params)

        def scatter(full: Any, part: Any, kp: Any) -> Any:
            i = ids.get(path_str(kp))
            if i is None:
                return part
            return jnp.zeros_like(full).at[i].set(part.astype(full.dtype))

        out = jax.tree_util.tree_map_with_path(lambda kp, f, p: scatter(f, p, kp), updates, sub)
        return out, state

    return optax.GradientTransformation(init, update)
