"""Decoder param paths <-> Hugging Face tensor names, driven by a family's `WeightRule` table.

Stacked decoder leaves `layers/...` (L, ...) correspond to L tensors `...layers.{i}...`; kernels
are `[in, out]` here and `[out, in]` in transformers (except Conv1D, e.g. GPT-2).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxtune.models.families import Family

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


@dataclasses.dataclass(frozen=True)
class LeafMapping:
    """Where one decoder leaf lives in an HF checkpoint."""

    path: tuple[str, ...]  # decoder path, e.g. ("layers", "self_attn", "q_proj", "kernel")
    hf_keys: tuple[str, ...]  # one key, or one per layer when stacked
    transpose: bool  # kernel stored [out, in] in HF
    stacked: bool

    @property
    def name(self) -> str:
        return "/".join(self.path)


def leaf_mapping(family: Family, path: tuple[str, ...], num_layers: int) -> LeafMapping:
    module, leaf = "/".join(path[:-1]), path[-1]
    for rule in family.weights:
        m = re.fullmatch(rule.ours, module)
        if m is None:
            continue
        hf_module = m.expand(rule.hf).replace("/", ".")
        hf_leaf = LEAF_NAMES[leaf]
        transpose = leaf == "kernel" and rule.transpose
        stacked = path[0] == "layers"
        if stacked:
            keys = tuple(f"{hf_module.format(i=i)}.{hf_leaf}" for i in range(num_layers))
        else:
            keys = (f"{hf_module}.{hf_leaf}",)
        return LeafMapping(path, keys, transpose, stacked)
    raise KeyError(f"no weight rule of family {family.model_type!r} covers {'/'.join(path)}")


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def leaf_mappings(
    family: Family, shapes: dict, num_layers: int
) -> list[tuple[LeafMapping, tuple[int, ...]]]:
    """(mapping, decoder shape) for every leaf of a param-shape tree, in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
    out = []
    for keypath, shape in flat:
        path = tuple(k.key for k in keypath)
        out.append((leaf_mapping(family, path, num_layers), shape))
    return out


def hf_tensor(arr: np.ndarray, transpose: bool) -> np.ndarray:
    """A decoder leaf slice -> its HF layout."""
    return arr.T if transpose and arr.ndim == 2 else arr


def to_hf_state(family: Family, params: dict, num_layers: int) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, host array) for every leaf of plain (unadapted, unquantized) params."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for keypath, value in flat:
        path = tuple(k.key for k in keypath)
        m = leaf_mapping(family, path, num_layers)
        host = np.asarray(jax.device_get(value))
        if m.stacked:
            for i, key in enumerate(m.hf_keys):
                yield key, np.ascontiguousarray(hf_tensor(host[i], m.transpose))
        else:
            yield m.hf_keys[0], np.ascontiguousarray(hf_tensor(host, m.transpose))
