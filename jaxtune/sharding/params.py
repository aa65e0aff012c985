"""Shardings of params, adapter and quantized leaves, optimizer states and batches.

    rules = rules_for("fsdp_tp")                      # or rules_from_config(config)
    shardings = param_shardings(params, mesh, rules)  # same tree as params, NamedSharding leaves
    params = jax.device_put(params, shardings)
    opt_shardings = opt_state_shardings(jax.eval_shape(tx.init, params), params, shardings, mesh)
    batch = jax.device_put(batch, batch_sharding(mesh, rules))
    model, params = jaxtune.models.load(path, shardings=sharding_fn(mesh, rules))

Each decoder leaf gets logical axes from `PARAM_AXES` (a table keyed by path regex), e.g.

    layers/self_attn/q_proj/kernel   (L, D, H*hd)   ("layers", "embed", "heads")
    layers/self_attn/o_proj/kernel   (L, H*hd, D)   ("layers", "heads", "embed")
    layers/mlp/down_proj/kernel      (L, F, D)      ("layers", "mlp", "embed")
    embed_tokens/embedding           (V, D)         ("vocab", "embed")

A weight leaf that is not an array (LoRA, DoRA, Houlsby, a quantized kernel, or nested: QLoRA)
is sharded like the dense weight it stands for. An adapter's base is sharded as a weight of its
own; each other adapter array takes, dimension by dimension, the logical axis of the dense
dimension of the same size (leading stacked axes by position): LoRA's A (L, in, r) takes `in`,
B (L, r, out) takes `out`, a DoRA magnitude (L, out) takes `out`. A quantized leaf's arrays keep
the dense axes by position where their size divides the dense one: NF4 data (L, in/2, out) and
absmax (L, in/B, out) take (layers, in, out). Paths no rule names are replicated.
Optimizer-state leaves take the sharding of the param they mirror (matched by key path and
shape); moments of another shape (factored, projected) are matched dimension by size, and
scalars are replicated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from jaxtune.sharding.rules import LogicalAxes, Rules, ShardingConfigError, axes_for, spec

PyTree = Any
ShardingFn = Callable[[str, tuple[int, ...]], Sharding]

PROJ_IN_OUT = {
    "q_proj": ("embed", "heads"),
    "qkv_proj": ("embed", "heads"),
    "k_proj": ("embed", "kv"),
    "v_proj": ("embed", "kv"),
    "o_proj": ("heads", "embed"),
    "gate_proj": ("embed", "mlp"),
    "up_proj": ("embed", "mlp"),
    "gate_up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
}
_PROJ = "|".join(PROJ_IN_OUT)

# (path regex, logical axes of the leaf's dimensions); first match wins; the rest is replicated.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("embed_tokens/embedding", ("vocab", "embed")),
    ("embed_positions/embedding", (None, "embed")),
    ("lm_head/kernel", ("embed", "vocab")),
    *(
        (f"layers/.*{name}/kernel", ("layers", a_in, a_out))
        for name, (a_in, a_out) in PROJ_IN_OUT.items()
    ),
    *((f"layers/.*{name}/bias", ("layers", a_out)) for name, (_, a_out) in PROJ_IN_OUT.items()),
    ("layers/.*", ("layers",)),
)


def logical_axes(name: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of a param leaf called `name` ('layers/mlp/up_proj/kernel'), padded to ndim."""
    for pattern, axes in PARAM_AXES:
        if re.fullmatch(pattern, name) and len(axes) <= ndim:
            return tuple(axes) + (None,) * (ndim - len(axes))
    return (None,) * ndim


def named(mesh: Mesh, logical: LogicalAxes, rules: Rules, shape: Sequence[int]) -> NamedSharding:
    """A NamedSharding for an array of `shape` whose dimensions carry these logical names."""
    return NamedSharding(mesh, spec(logical, rules, mesh, shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharding_fn(mesh: Mesh, rules: Rules) -> ShardingFn:
    """`(leaf_name, shape) -> Sharding` for `jaxtune.models.load(..., shardings=...)`."""

    def fn(name: str, shape: tuple[int, ...]) -> Sharding:
        return named(mesh, logical_axes(name, len(shape)), rules, shape)

    return fn


def param_shardings(params: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """A tree like `params` (weight-leaf objects kept) holding a NamedSharding per array."""

    def one(keypath: Sequence[Any], leaf: Any) -> Any:
        name = path_name(keypath)
        if _is_array(leaf):
            return named(mesh, logical_axes(name, len(leaf.shape)), rules, leaf.shape)
        return _weight_leaf_shardings(name, leaf, mesh, rules)

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=_is_weight_or_array)


def _weight_leaf_shardings(name: str, leaf: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings of every array inside a weight leaf, matched to its dense weight's axes.

    An adapter leaf (one with a `base`) shards its base as a weight of its own and matches its
    other arrays by size; a leaf without a base (a quantized kernel) keeps the dense weight's axes
    position by position, also where a dimension is a fraction of the dense one (packed codes
    `in/2`, block scales `in/B`).
    """
    dense = _dense_shape(leaf)
    if dense is None:  # no dense form and no base: nothing to match against
        return jax.tree.map(lambda _: replicated(mesh), leaf)
    dense_axes = logical_axes(name, len(dense))
    is_adapter = hasattr(leaf, "base")
    children, treedef = jax.tree_util.tree_flatten(
        leaf, is_leaf=lambda x: x is not leaf and _is_weight_or_array(x)
    )
    out = []
    for child in children:
        if not _is_array(child):
            out.append(_weight_leaf_shardings(name, child, mesh, rules))
            continue
        shape = tuple(child.shape)
        axes = (
            match_axes(shape, dense, dense_axes)
            if is_adapter
            else match_packed(shape, dense, dense_axes)
        )
        out.append(named(mesh, axes, rules, shape))
    return jax.tree_util.tree_unflatten(treedef, out)


def match_packed(
    shape: tuple[int, ...], dense: tuple[int, ...], dense_axes: tuple[str | None, ...]
) -> tuple[str | None, ...]:
    """Axes for an array that stores the dense weight in another form, dimension by dimension
    (a dimension that divides the dense one keeps its axis); other ranks as `match_axes`."""
    if len(shape) != len(dense):
        return match_axes(shape, dense, dense_axes)
    return tuple(
        ax if size > 0 and full % size == 0 else None
        for size, full, ax in zip(shape, dense, dense_axes, strict=True)
    )


def match_axes(
    shape: tuple[int, ...], dense: tuple[int, ...], dense_axes: tuple[str | None, ...]
) -> tuple[str | None, ...]:
    """Logical axes for an array that lives alongside a dense weight (adapter, moment, packing).

    Leading stacked dimensions match by position; each remaining dimension takes the axis of the
    dense weight's `[in, out]` dimension with the same size (`out` first for the last dimension,
    the same position first otherwise); anything else is replicated.
    """
    lead = max(len(dense) - 2, 0)
    trailing = list(range(lead, len(dense)))
    used: set[int] = set()
    out: list[str | None] = []
    for i, size in enumerate(shape):
        if i < lead:
            out.append(dense_axes[i] if size == dense[i] else None)
            continue
        first = [len(dense) - 1] if i == len(shape) - 1 else [i] if i in trailing else []
        pick = next((j for j in first + trailing if j not in used and dense[j] == size), None)
        if pick is not None:
            used.add(pick)
        out.append(None if pick is None else dense_axes[pick])
    return tuple(out)


def opt_state_shardings(opt_state: PyTree, params: PyTree, shardings: PyTree, mesh: Mesh) -> PyTree:
    """Shardings for an optimizer state (arrays or `jax.eval_shape(tx.init, params)`).

    A state leaf whose key path ends with a param's key path and has its shape takes the param's
    sharding; same path but another shape: dimensions matched by size to the param's; no path
    match: replicated.
    """
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], NamedSharding]] = {}
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_shardings = jax.tree_util.tree_leaves(shardings, is_leaf=_is_sharding)
    if len(flat_params) != len(flat_shardings):
        raise ShardingConfigError(
            f"opt_state_shardings: params have {len(flat_params)} arrays but the shardings "
            f"{len(flat_shardings)}; pass the output of param_shardings(params, ...)"
        )
    for (kp, p), s in zip(flat_params, flat_shardings, strict=True):
        by_path[_keys(kp)] = (tuple(p.shape), s)

    def one(keypath: Sequence[Any], leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        keys = _keys(keypath)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is None:
                continue
            p_shape, p_sharding = hit
            if p_shape == shape:
                return p_sharding
            axes = match_axes(shape, p_shape, _spec_as_axes(p_sharding.spec, len(p_shape)))
            return NamedSharding(mesh, PartitionSpec(*_dedupe(axes, mesh, shape)))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, opt_state)


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    """Rows of every batch array split over the rules' `batch` axes (the rest replicated)."""
    from jaxtune.sharding.rules import rules_for

    rules = rules if rules is not None else rules_for()
    return NamedSharding(mesh, spec(("batch",), rules, mesh))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways a batch is split: its global size must be a multiple of this."""
    size = 1
    for axis in axes_for("batch", rules):
        size *= mesh.shape[axis]
    return size


def path_name(keypath: Sequence[Any]) -> str:
    """A key path as 'layers/self_attn/q_proj/kernel'."""
    return "/".join(_keys(keypath))


# ----------------------------------------------------------------------------- helpers
def _keys(keypath: Sequence[Any]) -> tuple[str, ...]:
    out = []
    for k in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not hasattr(x, "materialize")


def _is_weight_or_array(x: Any) -> bool:
    return _is_array(x) or hasattr(x, "materialize")


def _is_sharding(x: Any) -> bool:
    return isinstance(x, Sharding)


def _dense_shape(leaf: Any) -> tuple[int, ...] | None:
    """Shape of the dense weight a leaf stands for (via its base when it has no dense form)."""
    if _is_array(leaf):
        return tuple(leaf.shape)
    try:
        return tuple(jax.eval_shape(lambda w: w.materialize(), leaf).shape)
    except Exception:  # e.g. a nonlinear (Houlsby) adapter: take the shape of what it wraps
        base = getattr(leaf, "base", None)
        return None if base is None else _dense_shape(base)


def _spec_as_axes(p: PartitionSpec, ndim: int) -> tuple[Any, ...]:
    """A PartitionSpec's entries used directly as 'logical' names of a one-to-one rule table."""
    entries = tuple(p) + (None,) * (ndim - len(p))
    return entries


def _dedupe(axes: tuple[Any, ...], mesh: Mesh, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """Mesh-axis entries with repeats and non-dividing axes removed."""
    used: set[str] = set()
    out = []
    for entry, size in zip(axes, shape, strict=True):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept: list[str] = []
        for a in names:
            n = mesh.shape[a] * _prod(mesh.shape[x] for x in kept)
            if a in used or size % n:
                break
            kept.append(a)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return tuple(out)


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= x
    return out
