"""Logical-axis rules: which mesh axes each named array dimension is split over, as data.

Every array dimension that matters has a logical name; a rule table maps the name to a mesh axis
(`"fsdp"`), a tuple of mesh axes (`("fsdp", "data")`, split over both, first one major) or None
(replicated). The mesh axes are always `("data", "fsdp", "tensor")` (see `mesh.py`).

    logical name   what it names                              fsdp_tp (base)
    ------------   ----------------------------------------   ---------------
    batch          rows of a batch                             ("fsdp", "data")
    sequence       token positions                             None
    layers         the stacked (scanned) layer axis            None
    embed          the model width D                           "fsdp"
    mlp            the MLP's hidden width F                    "tensor"
    heads          query heads (and q/o kernels' H*hd side)    "tensor"
    kv             key/value heads (k/v kernels' K*hd side)    "tensor"
    vocab          the vocabulary                              "tensor"

Topologies are small overlays on that base:

    dp        params replicated; batch over every device
    fsdp      params split over "fsdp" on their embed side (ZeRO-3); batch over every device
    fsdp_tp   the base: FSDP on embed, Megatron-style tensor parallelism on mlp/heads/kv/vocab

`spec(logical_axes, rules, mesh, shape)` turns names into a `PartitionSpec`; a mesh axis of size
1, one already used by an earlier dimension, or one that does not divide the dimension is dropped,
so a rule table fits every model and mesh shape (a KV head count of 1 is simply replicated).

Batch order is ("fsdp", "data"), fsdp major, on purpose. On jax 0.10.2 (Shardy partitioner,
XLA:CPU) a (2, 2, 2) mesh with weights split P("fsdp", "tensor") and a batch split
P(("data", "fsdp")) computes the right loss but wrong gradients (errors as large as the
gradients). The same weights with the batch P(("fsdp", "data")) are right
(tests/test_sharding_xla_bug.py shows both), and so is the faulty order under the older GSPMD
partitioner (jax_use_shardy_partitioner=False, checked by hand). No single weight
triggers it; pairs do (q_proj with o_proj, up_proj with down_proj, embedding with lm_head, all
split P("fsdp", "tensor")). The shipped fsdp_tp layout splits o/down_proj the other way round and
gave right gradients with either order on (2, 2, 2), but the order is not left to chance:
`check_rules` rejects ("data", ..., "fsdp") whenever some logical name maps to "tensor".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxtune.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]
LogicalAxes = Sequence[str | None]

BASE_RULES: Rules = (
    ("batch", ("fsdp", "data")),
    ("sequence", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("vocab", "tensor"),
)
ALL_DEVICES = ("fsdp", "data", "tensor")
OVERLAYS: dict[str, dict[str, MeshAxes]] = {
    "dp": {
        "batch": ALL_DEVICES,
        "embed": None,
        "mlp": None,
        "heads": None,
        "kv": None,
        "vocab": None,
    },
    "fsdp": {"batch": ALL_DEVICES, "mlp": None, "heads": None, "kv": None, "vocab": None},
    "fsdp_tp": {},
}
TOPOLOGIES = tuple(OVERLAYS)


class ShardingConfigError(UserError):
    """A mesh or rule setting that cannot work (unknown topology, axis or logical name)."""


def rules_for(topology: str = "fsdp_tp", overrides: Mapping[str, MeshAxes] | None = None) -> Rules:
    """The base rules with a topology's overlay and then `overrides` applied on top."""
    if topology not in OVERLAYS:
        raise ShardingConfigError(
            f"sharding.topology={topology!r} is unknown; choose one of {', '.join(TOPOLOGIES)}"
        )
    table = dict(BASE_RULES)
    table.update(OVERLAYS[topology])
    for name, axes in (overrides or {}).items():
        if name not in table:
            raise ShardingConfigError(
                f"sharding.rules has unknown logical axis {name!r}; known: {', '.join(table)}"
            )
        table[name] = _as_axes(axes)
    rules = tuple(table.items())
    check_rules(rules)
    return rules


def check_rules(rules: Rules) -> None:
    """Refuse unknown mesh axes and the batch order that gives wrong gradients (see module doc)."""
    table = dict(rules)
    for name, axes in rules:
        for axis in _axes_tuple(axes):
            if axis not in MESH_AXES:
                raise ShardingConfigError(
                    f"sharding rule {name!r} -> {axis!r}: mesh axes are {', '.join(MESH_AXES)}"
                )
    batch = _axes_tuple(table.get("batch"))
    uses_tensor = any("tensor" in _axes_tuple(a) for n, a in rules if n != "batch")
    if (
        uses_tensor
        and "data" in batch
        and "fsdp" in batch
        and batch.index("data") < batch.index("fsdp")
    ):
        raise ShardingConfigError(
            f"sharding rule batch -> {batch} puts 'data' before 'fsdp' while weights use "
            "'tensor': that layout gives wrong gradients on jax 0.10.2 (Shardy); write "
            "('fsdp', 'data') instead"
        )


def axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    """The mesh axes a logical name maps to (empty for None or an unmapped name)."""
    if name is None:
        return ()
    return _axes_tuple(dict(rules).get(name))


def spec(
    logical_axes: LogicalAxes,
    rules: Rules,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """A PartitionSpec for an array whose dimensions carry these logical names.

    With `mesh`, axes of size 1 are dropped; with `shape` too, a dimension keeps only the longest
    prefix of its axes whose total size divides it. A mesh axis is used at most once per array.
    """
    used: set[str] = set()
    out: list[MeshAxes] = []
    for i, name in enumerate(logical_axes):
        axes = [a for a in axes_for(name, rules) if a not in used]
        if mesh is not None:
            axes = [a for a in axes if mesh.shape[a] > 1]
            if shape is not None:
                axes = _dividing_prefix(axes, mesh, shape[i])
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def _dividing_prefix(axes: list[str], mesh: Mesh, size: int) -> list[str]:
    kept: list[str] = []
    for a in axes:
        if size % int(np.prod([mesh.shape[x] for x in [*kept, a]])) != 0:
            break
        kept.append(a)
    return kept


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _as_axes(axes: object) -> MeshAxes:
    """Config values (str, list, tuple, None, '') as rule values."""
    if axes is None or axes == "" or axes == ():
        return None
    if isinstance(axes, str):
        return axes
    items = tuple(str(a) for a in axes)  # type: ignore[union-attr]
    return items[0] if len(items) == 1 else items
