"""The train step's layouts, from `jaxtune.sharding`: one mesh (data, fsdp, tensor), its rules,
and a NamedSharding for every array of the state, the frozen params and the batch.

One device is a 1x1x1 mesh; there is no second code path.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune import sharding


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_like(tree: Any, mask: Any) -> tuple[Any, Any]:
    """(tree where mask, tree where not): None in the other's holes, as peft.split_trainable."""
    a = jax.tree.map(lambda x, m: x if m else None, tree, mask)
    b = jax.tree.map(lambda x, m: None if m else x, tree, mask)
    return a, b


def params_shardings(params: Any, mesh: Mesh, rules: Any, mask: Any = None) -> tuple[Any, Any]:
    """(shardings of the trainable part, of the frozen part) of the full `params`.

    mask: peft.trainable_mask(params), or None when everything trains."""
    try:
        full = sharding.param_shardings(params, mesh, rules)
    except Exception as e:  # Houlsby adapter leaves have no dense weight to take a layout from
        if type(e).__name__ != "MergeError":
            raise
        full = jax.tree.map(lambda _: replicated(mesh), params)
    if mask is None:
        return full, {}
    return split_like(full, mask)


def opt_state_shardings(opt_shapes: Any, params: Any, param_sh: Any, mesh: Mesh) -> Any:
    return sharding.opt_state_shardings(opt_shapes, params, param_sh, mesh)


def batch_shardings(batch: Any, mesh: Mesh, rules: Any = None) -> Any:
    """Every batch array [B, ...] split on its rows over the rules' batch axes."""
    row = sharding.batch_sharding(mesh, rules)
    return jax.tree.map(lambda _: row, batch)


def put_batch(batch: Any, mesh: Mesh, rules: Any = None) -> Any:
    """Host numpy batch -> global arrays split over the batch axes (multi-host safe)."""
    row = sharding.batch_sharding(mesh, rules)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(row, np.asarray(x)), batch)


def check_batch_size(batch_size: int, grad_accum: int, mesh: Mesh, rules: Any) -> None:
    from jaxtune.errors import UserError

    ways = sharding.data_parallel_size(mesh, rules)
    micro = batch_size // grad_accum
    if micro % ways:
        raise UserError(
            f"train.batch_size={batch_size} / train.grad_accum={grad_accum} = {micro} rows per "
            f"micro-batch do not split over the {ways} data-parallel devices; make it a multiple."
        )
