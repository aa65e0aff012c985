"""Freeze-tuning with LlamaFactory's semantics: train the last (or first) N decoder layers, or
only some modules of them, plus named modules outside the layers; everything else is frozen.

    freeze(params, trainable_layers=2)                          # last 2 layers, all modules
    freeze(params, trainable_layers=-1, trainable_modules=["mlp"])   # first layer's MLP
    freeze(params, trainable_layers=0, extra_modules=["embed_tokens", "norm"])

jaxtune stacks the decoder layers on a leading axis L, so one leaf holds frozen and trainable
layers. `freeze` returns the same params in a `FreezeParams` dict (the model reads it like any
dict) whose pytree metadata records, per array path, which layers train:

    layers/mlp/down_proj/kernel (L, F, D)   ->  label "trainable" + layer mask [L] bool

`peft.param_labels` / `trainable_mask` read it, `peft.layer_trainable_mask(params)` gives the
per-layer masks (None where a leaf trains whole) and `peft.zero_frozen_layers(updates, params)`
zeroes the frozen layers' slices of an update. The record survives `jax.tree.map`, `jit` and
`grad`; rebuilding the root dict by hand (`{**params}`) drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.peft.errors import TargetError
from jaxtune.peft.select import is_weight_leaf, leaves_with_paths

LayerMask = tuple[bool, ...]
Spec = tuple[tuple[str, bool | LayerMask], ...]  # (array path, True | per-layer mask)
ALL = "all"


@jax.tree_util.register_pytree_with_keys_class
class FreezeParams(dict):
    """A params dict that carries which arrays (and which stacked layers) are trainable."""

    def __init__(self, items: Any = (), spec: Spec = ()):
        super().__init__(items)
        self.spec = spec

    def tree_flatten_with_keys(self):
        keys = tuple(sorted(self))
        children = [(jax.tree_util.DictKey(k), self[k]) for k in keys]
        return children, (keys, self.spec)

    def tree_flatten(self):
        keys = tuple(sorted(self))
        return [self[k] for k in keys], (keys, self.spec)

    @classmethod
    def tree_unflatten(cls, aux: tuple[tuple[str, ...], Spec], children: Sequence[Any]):
        keys, spec = aux
        return cls(zip(keys, children, strict=True), spec)

    def __repr__(self) -> str:
        return f"FreezeParams({dict.__repr__(self)}, {len(self.spec)} trainable arrays)"


def freeze_spec(params: Any) -> dict[str, bool | LayerMask] | None:
    """{path: True | per-layer mask} of the trainable arrays, or None when `freeze` was not used."""
    return dict(params.spec) if isinstance(params, FreezeParams) else None


def plain(params: Any) -> Any:
    """The params without the freeze record (a plain dict at the root)."""
    return dict(params) if isinstance(params, FreezeParams) else params


def trainable_layer_ids(n: int, num_layers: int) -> list[int]:
    """LlamaFactory: n > 0 the last n layers, n < 0 the first |n|."""
    if n > 0:
        return list(range(max(0, num_layers - n), num_layers))
    return list(range(min(-n, num_layers)))


def freeze(
    params: Any,
    trainable_layers: int = 2,
    trainable_modules: str | Sequence[str] = ALL,
    extra_modules: str | Sequence[str] = (),
    layers_key: str = "layers",
) -> FreezeParams:
    """Params with only the chosen layers/modules trainable (LlamaFactory's `freeze_trainable_*`).

    trainable_layers: N > 0 trains the last N layers, N < 0 the first |N|.
    trainable_modules: "all", or module names inside a layer ("mlp", "self_attn", "q_proj").
    extra_modules: modules outside the layers that train whole ("embed_tokens", "norm", "lm_head").
    """
    modules = _names(trainable_modules)
    extras = _names(extra_modules)
    flat = [
        (path, leaf)
        for path, leaf in leaves_with_paths(plain(params))
        if not is_weight_leaf(leaf) and hasattr(leaf, "shape")
    ]
    prefix = layers_key + "/"
    inside = [(p, x) for p, x in flat if p.startswith(prefix)]
    outside = [(p, x) for p, x in flat if not p.startswith(prefix)]
    if not inside:
        raise TargetError(f"freeze: params have no stacked '{layers_key}/...' arrays to select")
    num_layers = int(inside[0][1].shape[0])
    ids = set(trainable_layer_ids(trainable_layers, num_layers))
    mask = tuple(i in ids for i in range(num_layers))

    _check_names(modules, [p[len(prefix) :] for p, _ in inside], "trainable_modules", ALL)
    _check_names(extras, [p for p, _ in outside], "extra_modules")
    spec: list[tuple[str, bool | LayerMask]] = []
    for path, _ in inside:
        parts = path[len(prefix) :].split("/")
        if ids and (ALL in modules or any(m in parts for m in modules)):
            spec.append((path, True if all(mask) else mask))
    for path, _ in outside:
        if any(m in path.split("/") for m in extras):
            spec.append((path, True))
    return FreezeParams(plain(params), tuple(spec))


def layer_mask_array(value: bool | LayerMask) -> np.ndarray | None:
    return None if value is True else np.asarray(value, bool)


def _names(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _check_names(names: list[str], paths: list[str], what: str, wildcard: str = "") -> None:
    present = {part for p in paths for part in p.split("/")[:-1]}
    unknown = [n for n in names if n != wildcard and n not in present]
    if unknown:
        top = sorted({p.split("/")[0] for p in paths})
        raise TargetError(
            f"freeze: {what} {unknown} not found; available modules: {', '.join(top)}"
        )
