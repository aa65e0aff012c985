"""`shard(x, logical_axes)`: pin an activation's layout inside traced code, or do nothing.

    with use_mesh(mesh, rules):                 # outside jit
        step = jax.jit(train_step, ...)
        step(state, batch)

    # inside the model / loss (traced under the context above):
    x = shard(x, ("batch", "sequence", "embed"))   # (B, T, D)

Without an active mesh (plain CPU, a notebook, a user's own code) `shard` returns `x` unchanged,
so the same model code runs on one device and on a pod. `use_mesh` also enters `jax.set_mesh`, so
raw PartitionSpecs work in the traced code; under a bare `jax.set_mesh(mesh)` (no rules given)
`shard` applies the default fsdp_tp rules. It also hands the layout to
`jaxtune.models.attention.layout`, so per-device kernels (splash) shard themselves the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from jaxtune.models import attention
from jaxtune.sharding.rules import LogicalAxes, Rules, rules_for, spec

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "jaxtune_sharding", default=None
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules | None = None) -> Iterator[Mesh]:
    """Make `mesh` and `rules` current for `shard` (and for jax, via `jax.set_mesh`)."""
    rules = rules if rules is not None else rules_for()
    token = _ACTIVE.set((mesh, rules))
    try:
        with jax.set_mesh(mesh), attention.layout(mesh, functools.partial(_spec, mesh, rules)):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def _spec(mesh: Mesh, rules: Rules, logical_axes: LogicalAxes, shape: Sequence[int]):
    return spec(logical_axes, rules, mesh, shape)


def active() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) set by `use_mesh`, else None."""
    return _ACTIVE.get()


def shard(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
    """`with_sharding_constraint(x, <rules applied to logical_axes>)`, or x without a mesh."""
    current = _ACTIVE.get()
    if current is not None:
        mesh, rules = current
        if mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, spec(logical_axes, rules, mesh, x.shape))
        )
    abstract = jax.sharding.get_abstract_mesh()
    if abstract.empty or abstract.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, spec(logical_axes, rules_for(), abstract, x.shape))
