"""LoRA (Hu et al. 2021) as a weight leaf: `y = x @ W + scale * (dropout(x) @ A) @ B`.

    before                                   after peft.lora(params, ["q_proj"], rank=8)
    layers/self_attn/q_proj/kernel (L,D,D)   layers/self_attn/q_proj/kernel = LoraWeight(
                                                 base   (L, D, D)   frozen, any weight leaf
                                                 lora_a (L, D, 8)   kaiming-uniform (PEFT)
                                                 lora_b (L, 8, D)   zeros
                                                 dropout_rng None   set per step, see below
                                                 scale = alpha / rank  (alpha / sqrt(rank): rsLoRA))

The matmul never forms `W + BA`: the low-rank path costs O(r (in + out)) per token. `materialize`
gives the dense weight for merging and export.

Dropout needs randomness inside a pure apply: each leaf has a `dropout_rng` field, None by default
(no dropout, evaluation). A train step sets fresh keys with `peft.with_dropout_rng(params, rng)`
inside its loss function (after `combine`, so the keys never enter `jax.grad`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxtune.peft.errors import RankError, TargetError
from jaxtune.peft.select import Targets, map_selected, select
from jaxtune.peft.weight import (
    AdapterLeaf,
    base_linear,
    dense_shape,
    dropout,
    kaiming_uniform,
    low_rank,
    materialize,
)


@struct.dataclass
class LoraWeight(AdapterLeaf):
    """A frozen `base` [..., in, out] plus `scale * lora_a [..., in, r] @ lora_b [..., r, out]`."""

    base: Any
    lora_a: jax.Array
    lora_b: jax.Array
    dropout_rng: jax.Array | None = None  # [..., key]; None: no dropout
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout: float = struct.field(pytree_node=False, default=0.0)
    residual_base: bool = struct.field(pytree_node=False, default=False)  # PiSSA: base = W - sAB

    trainable_fields = {"lora_a": "lora_a", "lora_b": "lora_b"}  # noqa: RUF012

    @property
    def rank(self) -> int:
        return self.lora_a.shape[-1]

    def linear(self, x: jax.Array) -> jax.Array:
        y = base_linear(x, self.base)
        h = dropout(x, self.dropout, self.dropout_rng)
        low = low_rank(h, self.lora_a, self.lora_b)
        return y + (self.scale * low).astype(y.dtype)

    def delta(self) -> jax.Array:
        """scale * A @ B [..., in, out] in fp32 (merging and export only)."""
        a, b = self.lora_a.astype(jnp.float32), self.lora_b.astype(jnp.float32)
        return self.scale * jnp.matmul(a, b)

    def materialize(self) -> jax.Array:
        w = materialize(self.base)
        return (w.astype(jnp.float32) + self.delta()).astype(w.dtype)


def scaling(alpha: float, rank: int, rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def check_rank(path: str, shape: tuple[int, ...], rank: int, what: str = "rank") -> None:
    """RankError unless 1 <= rank <= min(in, out)."""
    n_in, n_out = shape[-2:]
    if not 1 <= rank <= min(n_in, n_out):
        raise RankError(
            f"{path}: {what}={rank} but the weight is [in={n_in}, out={n_out}]; use a {what} "
            f"between 1 and {min(n_in, n_out)}"
        )


def check_unadapted(path: str, leaf: Any) -> None:
    if isinstance(leaf, AdapterLeaf):
        raise TargetError(
            f"{path} already carries a {type(leaf).__name__}; merge or disable it first "
            "(peft.merge / peft.disable), or choose other targets"
        )


def init_low_rank(
    rng: jax.Array, shape: tuple[int, ...], rank: int, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """PEFT's default init: A kaiming-uniform [..., in, r] (per stacked layer), B zeros."""
    *lead, n_in, n_out = shape
    a = kaiming_uniform(rng, (*lead, n_in, rank), n_in, dtype)
    b = jnp.zeros((*lead, rank, n_out), dtype)
    return a, b


def leaf_rngs(rng: jax.Array, paths: list[str]) -> dict[str, jax.Array]:
    """One independent key per selected path (stable in the order of the tree)."""
    return {p: jax.random.fold_in(rng, i) for i, p in enumerate(paths)}


def lora(
    params: Any,
    targets: Targets,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    rslora: bool = False,
    rng: jax.Array,
    dtype: Any = jnp.float32,
) -> Any:
    """Wrap every kernel selected by `targets` in a `LoraWeight` (A random, B zero: the model is
    unchanged at step 0). Adapter arrays are created in `dtype` (fp32, as PEFT keeps them)."""
    paths = select(params, targets)
    keys = leaf_rngs(rng, paths)
    scale = scaling(alpha, rank, rslora)

    def wrap(path: str, w: Any) -> LoraWeight:
        check_unadapted(path, w)
        shape = dense_shape(w)
        check_rank(path, shape, rank)
        a, b = init_low_rank(keys[path], shape, rank, dtype)
        return LoraWeight(base=w, lora_a=a, lora_b=b, scale=scale, dropout=float(dropout))

    return map_selected(params, paths, wrap)
