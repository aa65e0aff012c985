"""Pure functions over adapted params: labels and masks for the optimizer, split/combine for
`jax.grad`, merge/unmerge/disable, dropout keys, and a PEFT-style parameter count.

Which arrays train:
- inside an adapter leaf: its `trainable_fields` (lora_a, lora_b, magnitude, adapter weights);
  its base (any weight) and dropout key are frozen;
- plain arrays: those `peft.freeze` named (whole, or some stacked layers); without `freeze`, all of
  them when the tree has no adapter (full fine-tuning) and none when it has one (PEFT's rule);
- quantized or integer arrays never.

Labels per array: "frozen", "lora_a", "lora_b", "dora_magnitude", "adapter", "trainable".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.peft.dora import DoraWeight, column_norm
from jaxtune.peft.freeze import freeze_spec, layer_mask_array, plain
from jaxtune.peft.lora import LoraWeight
from jaxtune.peft.select import is_weight_leaf, path_str
from jaxtune.peft.weight import AdapterLeaf, dense_shape, frozen, materialize

FROZEN = "frozen"
TRAINABLE = "trainable"


def _has_adapters(params: Any) -> bool:
    leaves = jax.tree.leaves(params, is_leaf=is_weight_leaf)
    return any(isinstance(x, AdapterLeaf) for x in leaves)


def _map_top(fn: Any, params: Any) -> Any:
    """tree_map_with_path over plain arrays and whole weight leaves: fn(path, leaf)."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: fn(path_str(kp), x), params, is_leaf=is_weight_leaf
    )


def _plain_state(params: Any) -> Any:
    """fn(path, array) -> True (trains whole) | tuple mask (some layers) | False (frozen)."""
    spec = freeze_spec(params)
    default = not _has_adapters(params)

    def state(path: str, x: Any) -> bool | tuple[bool, ...]:
        if not jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.inexact):
            return False
        if spec is None:
            return default
        return spec.get(path, False)

    return state


def _adapter_labels(leaf: AdapterLeaf) -> AdapterLeaf:
    all_frozen = jax.tree.map(lambda _: FROZEN, leaf)
    return dataclasses.replace(all_frozen, **leaf.trainable_fields)


def param_labels(params: Any) -> Any:
    """A pytree of strings, one per array leaf (the structure of `params`).

    A labels tree labels itself, so `split_trainable(param_labels(params))` splits the labels
    the way `split_trainable(params)` splits the params."""
    state = _plain_state(params)

    def label(path: str, x: Any) -> Any:
        if isinstance(x, str):
            return x
        if isinstance(x, AdapterLeaf):
            return _adapter_labels(x)
        if is_weight_leaf(x):
            return jax.tree.map(lambda _: FROZEN, x)
        return TRAINABLE if state(path, x) is not False else FROZEN

    return _map_top(label, params)


def trainable_mask(params: Any) -> Any:
    """A bool pytree: True on adapter arrays and unfrozen weights (any layer of a stacked leaf)."""
    return jax.tree.map(lambda lab: lab != FROZEN, param_labels(params))


def layer_trainable_mask(params: Any) -> Any:
    """Per array: a bool [L] numpy mask where only some stacked layers train, else None."""
    state = _plain_state(params)

    def mask(path: str, x: Any) -> Any:
        if is_weight_leaf(x):
            return jax.tree.map(lambda _: None, x)
        s = state(path, x)
        return None if isinstance(s, bool) else layer_mask_array(s)

    return _map_top(mask, params)


def zero_frozen_layers(updates: Any, params: Any) -> Any:
    """`updates` (same structure as params) with the frozen layers of partly trainable stacked
    leaves set to zero (use on gradients or optimizer updates)."""
    masks = layer_trainable_mask(params)

    def apply(mask: np.ndarray | None, u: Any) -> Any:
        if mask is None or u is None:
            return u
        return u * jnp.asarray(mask, u.dtype).reshape(mask.shape + (1,) * (u.ndim - 1))

    return jax.tree.map(apply, masks, updates, is_leaf=lambda x: x is None)


def stop_frozen(params: Any) -> Any:
    """Params with the gradient stopped on every frozen array (and frozen layer), so that
    `jax.grad` w.r.t. the whole tree is zero there and XLA skips those weight gradients."""
    state = _plain_state(params)

    def stop(path: str, x: Any) -> Any:
        if isinstance(x, AdapterLeaf):
            return dataclasses.replace(x, base=frozen(x.base))
        if is_weight_leaf(x):
            return frozen(x)
        s = state(path, x)
        if s is True:
            return x
        if s is False:
            return jax.lax.stop_gradient(x)
        keep = jnp.asarray(s).reshape((len(s),) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x, jax.lax.stop_gradient(x))

    return _map_top(stop, params)


def split_trainable(params: Any) -> tuple[Any, Any]:
    """(trainable, frozen): two trees of the structure of `params`, None where the other holds
    the array. Take `jax.grad` w.r.t. the first; `combine` puts them back together."""
    mask = trainable_mask(params)
    trainable = jax.tree.map(lambda x, m: x if m else None, params, mask)
    rest = jax.tree.map(lambda x, m: None if m else x, params, mask)
    return trainable, rest


def combine(trainable: Any, rest: Any) -> Any:
    """Inverse of `split_trainable`."""
    return jax.tree.map(
        lambda a, b: b if a is None else a, trainable, rest, is_leaf=lambda x: x is None
    )


def merge(params: Any) -> Any:
    """Plain params: every LoRA/DoRA leaf folded into its dense weight (Houlsby adapters refuse)."""
    return _map_top(
        lambda _, x: x.materialize() if isinstance(x, AdapterLeaf) else x, plain(params)
    )


def unmerge(merged: Any, adapted: Any) -> Any:
    """The adapted params again from merged weights: each base recomputed from `merged` and the
    adapter of `adapted` (W = W' - sAB; DoRA: W = W' n / m - sAB, n from `adapted`'s base)."""
    flat = dict(
        (path_str(kp), leaf)
        for kp, leaf in jax.tree_util.tree_flatten_with_path(merged, is_leaf=is_weight_leaf)[0]
    )

    def restore(path: str, x: Any) -> Any:
        if not isinstance(x, LoraWeight | DoraWeight):
            return x
        w = flat[path].astype(jnp.float32)
        if isinstance(x, DoraWeight):
            norm = column_norm(materialize(x.base), x.lora_a, x.lora_b, x.scale)
            w = w * (norm / x.magnitude.astype(jnp.float32))[..., None, :]
        delta = x.scale * jnp.matmul(x.lora_a.astype(jnp.float32), x.lora_b.astype(jnp.float32))
        return dataclasses.replace(x, base=(w - delta).astype(flat[path].dtype))

    return _map_top(restore, adapted)


def disable(params: Any) -> Any:
    """The base model: each adapter leaf replaced by its base (e.g. the reference policy of DPO).

    Freeze-tuned weights are trained in place, so `disable` cannot recover them (keep a copy)."""
    return _map_top(lambda _, x: x.base if isinstance(x, AdapterLeaf) else x, plain(params))


def with_dropout_rng(params: Any, rng: jax.Array | None) -> Any:
    """Fresh dropout keys (one per stacked layer of each leaf with dropout > 0); None turns
    dropout off. Call it inside the loss function, on the combined params."""
    counter = iter(range(1 << 30))

    def set_rng(_: str, x: Any) -> Any:
        if not isinstance(x, LoraWeight | DoraWeight) or x.dropout == 0.0:
            return x
        if rng is None:
            return dataclasses.replace(x, dropout_rng=None)
        lead = x.lora_a.shape[:-2]
        keys = jax.random.split(jax.random.fold_in(rng, next(counter)), int(np.prod(lead)))
        return dataclasses.replace(x, dropout_rng=keys.reshape(lead + keys.shape[1:]))

    return _map_top(set_rng, params)


def count_parameters(params: Any) -> tuple[int, int]:
    """(trainable, all) parameter counts; a quantized weight counts as its dense size, a
    partly trainable stacked leaf by its trainable layers."""
    state = _plain_state(params)
    totals = [0, 0]

    def visit(path: str, x: Any) -> None:
        if isinstance(x, AdapterLeaf):
            totals[1] += int(np.prod(dense_shape(x.base)))
            for name in x.trainable_fields:
                n = int(np.size(getattr(x, name)))
                totals[0] += n
                totals[1] += n
        elif is_weight_leaf(x):
            totals[1] += int(np.prod(dense_shape(x)))
        elif x is not None:
            n = int(np.size(x))
            s = state(path, x)
            totals[1] += n
            totals[0] += n if s is True else 0 if s is False else n * sum(s) // len(s)

    _map_top(visit, params)
    return totals[0], totals[1]


def print_trainable_parameters(params: Any) -> str:
    """Print (and return) PEFT's line: trainable params: X || all params: Y || trainable%: Z."""
    trainable, total = count_parameters(params)
    line = (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / max(total, 1):.4f}"
    )
    print(line)
    return line
