"""What the optimizer knows about each array of a params tree: its role and its kind.

The role comes from PEFT (`jaxtune.peft.param_labels`, or any tree of the same strings):

    frozen | lora_a | lora_b | dora_magnitude | adapter | trainable

The kind of an array comes from its path and shape:

    dense2d    a weight matrix [in, out], or [L, in, out] stacked under `layers/` (GaLore's)
    embedding  a token or position table (`embed_*`, `.../embedding`): its own learning rate
    no_decay   norm scales, biases, DoRA magnitudes: no weight decay
    other      anything else

For a jaxtune Llama with LoRA on q_proj, trained whole elsewhere:

    path                                       shape       role       kind
    embed_tokens/embedding                     (V, D)      trainable  embedding
    layers/input_layernorm/scale               (L, D)      trainable  no_decay
    layers/self_attn/q_proj/kernel/base        (L, D, D)   frozen     dense2d
    layers/self_attn/q_proj/kernel/lora_a      (L, D, r)   lora_a     dense2d
    layers/self_attn/q_proj/kernel/lora_b      (L, r, D)   lora_b     dense2d

A stacked leaf of which only some layers train (`peft.freeze`) also carries the trainable layer
ids (`LeafInfo.layers`), so that optimizer state is kept for those layers only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.optim.errors import OptimError

FROZEN = "frozen"
TRAINABLE = "trainable"
LORA_A, LORA_B = "lora_a", "lora_b"
DORA_MAGNITUDE = "dora_magnitude"
ADAPTER = "adapter"
ROLES = (FROZEN, LORA_A, LORA_B, DORA_MAGNITUDE, ADAPTER, TRAINABLE)
DENSE2D, EMBEDDING, NO_DECAY, OTHER = "dense2d", "embedding", "no_decay", "other"
LAYERS_KEY = "layers"  # jaxtune decoders stack their layers on the leading axis under this key


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One array of the params tree, as the optimizer sees it."""

    path: str  # '/'-joined key path, e.g. "layers/mlp/up_proj/kernel"
    shape: tuple[int, ...]
    role: str
    kind: str
    layers: tuple[int, ...] | None = None  # trainable layers of a partly trained stacked leaf

    @property
    def stacked(self) -> bool:
        """Under `layers/`: the leading axis is the decoder layer."""
        return self.path.split("/", 1)[0] == LAYERS_KEY and len(self.shape) >= 1

    @property
    def trainable(self) -> bool:
        return self.role != FROZEN


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(keypath: Any) -> str:
    """A jax key path as 'a/b/c'."""
    return "/".join(_key_name(k) for k in keypath)


def flatten(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """([(path, leaf)], treedef) with None kept as a leaf (the holes of a split params tree)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return [(path_str(kp), leaf) for kp, leaf in flat], treedef


def kind_of(path: str, shape: tuple[int, ...], role: str) -> str:
    """dense2d | embedding | no_decay | other, from the path and the shape."""
    names = path.split("/")
    last = names[-1]
    if role == DORA_MAGNITUDE or last == "magnitude":
        return NO_DECAY
    if last == "embedding" or any(n.startswith("embed") for n in names):
        return EMBEDDING
    if last in ("bias", "scale") or last.endswith("_bias"):
        return NO_DECAY
    if any("norm" in n or n.startswith("ln_") or n == "ln" for n in names[:-1]):
        return NO_DECAY
    matrix_ndim = 3 if names[0] == LAYERS_KEY else 2
    return DENSE2D if len(shape) == matrix_ndim else OTHER


def _layer_masks(params: Any) -> Any:
    """Per array: a bool [L] mask where `peft.freeze` trains only some stacked layers, else None."""
    from jaxtune import peft

    return peft.layer_trainable_mask(params)


def describe(params: Any, labels: Any = None) -> tuple[list[LeafInfo | None], Any]:
    """([LeafInfo or None per leaf position], treedef of `params` with None as a leaf).

    labels: a tree of role strings shaped like `params` (None or any string where `params`
    holds None); None derives them with `jaxtune.peft.param_labels(params)`: every float array
    trains for a plain tree (full fine-tuning), adapters only for an adapted one.
    """
    flat, treedef = flatten(params)
    if labels is None:
        from jaxtune import peft

        labels = peft.param_labels(params)
    try:
        roles = treedef.flatten_up_to(labels)
    except (ValueError, TypeError) as e:
        raise OptimError(
            f"optim: the labels tree does not have the structure of the params tree ({e}). "
            "Pass labels = jaxtune.peft.param_labels(params) (split like the params)."
        ) from None
    layer_masks = treedef.flatten_up_to(_layer_masks(params))
    infos: list[LeafInfo | None] = []
    for (path, leaf), role, mask in zip(flat, roles, layer_masks, strict=True):
        if leaf is None:
            infos.append(None)
            continue
        if role not in ROLES:
            raise OptimError(
                f"optim: unknown label {role!r} at {path}; labels are {', '.join(ROLES)}."
            )
        shape = tuple(leaf.shape)
        if role != FROZEN and not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise OptimError(
                f"optim: {path} is labelled {role!r} but holds {leaf.dtype} values, which "
                "cannot be trained; label it 'frozen'."
            )
        layers = None
        if mask is not None and role != FROZEN:
            layers = tuple(int(i) for i in np.flatnonzero(np.asarray(mask)))
        infos.append(LeafInfo(path, shape, role, kind_of(path, shape, role), layers))
    return infos, treedef


def summary(infos: list[LeafInfo | None]) -> str:
    """A few lines: counts of arrays and parameters per (role, kind)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for info in infos:
        if info is None:
            continue
        entry = counts.setdefault((info.role, info.kind), [0, 0])
        entry[0] += 1
        entry[1] += int(np.prod(info.shape))
    return "\n".join(
        f"{role:>15} {kind:<9} {n:4d} arrays {size:>14,d} params"
        for (role, kind), (n, size) in sorted(counts.items())
    )
