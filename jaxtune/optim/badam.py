"""BAdam (Luo et al. 2024): block coordinate descent with Adam, one block of layers at a time.

The decoder layers are split into blocks of `block_size` consecutive layers (a range of the
stacked L axis); optionally the embedding tables (first) and the head (lm_head with the final
norm, last) are one more block each, as BAdam's `include_embedding` / `include_lm_head`. Arrays
in no block do not train (BAdam's default). One block is active for K = `switch_every` steps and
updated with Adam; then the next one in ascending, descending, random (a fresh permutation every
pass over the blocks) or fixed order. On each switch the Adam state is reset (moments and the
bias-correction count), as BAdam clears its base optimizer's state.

State is the size of one block: for a stacked leaf (L, ...) the moments are (block_size, ...),
read and written at the active block's rows with dynamic slices:

    layers/mlp/up_proj/kernel (L, D, F)   ->  mu, nu (block_size, D, F)

Arrays of the optional embedding and head blocks keep full-size moments while their block is not
active (static shapes), so they add their size to the state. The update is exactly zero outside
the active block: those params stay bit-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtune.optim.labels import path_str


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The block table, in BAdam's order: [embedding], layer blocks, [head].

    Layer block j covers layers [j * block_size, min((j + 1) * block_size, num_layers)).
    """

    num_layers: int
    block_size: int
    embedding: bool = False  # the embedding tables are block 0
    head: bool = False  # lm_head and the final norm are the last block

    @property
    def first_layer_block(self) -> int:
        return int(self.embedding)

    @property
    def num_layer_blocks(self) -> int:
        return -(-self.num_layers // self.block_size)

    @property
    def count(self) -> int:
        return self.num_layer_blocks + int(self.embedding) + int(self.head)

    def index(self, member: str) -> int:
        """Block index of the 'embedding' or 'head' block."""
        return 0 if member == "embedding" else self.count - 1

    def names(self) -> list[str]:
        layers = [
            f"layers[{j * self.block_size}:{min((j + 1) * self.block_size, self.num_layers)}]"
            for j in range(self.num_layer_blocks)
        ]
        return ["embedding"] * self.embedding + layers + ["head"] * self.head


def active_block(
    step: Any, num_blocks: int, switch_every: int, mode: str, seed: int = 0, start: int = -1
) -> jax.Array:
    """The block updated at optimizer step `step` (int32; works on traced and Python ints)."""
    step = jnp.asarray(step, jnp.int32)
    switch = step // switch_every
    if start < 0:
        start = num_blocks - 1 if mode == "descending" else 0
    if mode == "ascending":
        return (start + switch) % num_blocks
    if mode == "descending":
        return (start - switch) % num_blocks
    if mode == "fixed":
        return jnp.asarray(start % num_blocks, jnp.int32)
    epoch, position = switch // num_blocks, switch % num_blocks
    order = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), num_blocks)
    return order[position].astype(jnp.int32)


class BadamState(NamedTuple):
    count: jax.Array  # int32: optimizer steps done (global; the block comes from it)
    mu: Any  # per stacked leaf (block_size, ...); per extra-block leaf its own shape
    nu: Any


def badam(
    blocks: Blocks,
    extra_block_of: Mapping[str, int],
    switch_every: int,
    mode: str = "ascending",
    seed: int = 0,
    start: int = -1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (with decoupled decay) on the active block only; chain the learning rate after it.

    Leaves of the tree are stacked layer leaves (L, ...) with L == blocks.num_layers, or leaves
    listed in `extra_block_of` (path -> index of the embedding or head block).
    """
    bs = blocks.block_size

    def moments_like(kp: Any, p: Any) -> jax.Array:
        if path_str(kp) in extra_block_of:
            return jnp.zeros(p.shape, jnp.float32)
        return jnp.zeros((min(bs, p.shape[0]), *p.shape[1:]), jnp.float32)

    def init(params: Any) -> BadamState:
        zeros = jax.tree_util.tree_map_with_path(moments_like, params)
        return BadamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.copy, zeros))

    def update(updates: Any, state: BadamState, params: Any = None) -> tuple[Any, BadamState]:
        if params is None and weight_decay:
            raise ValueError("badam with weight decay needs the params in update()")
        t = state.count
        block = active_block(t, blocks.count, switch_every, mode, seed, start)
        reset = t % switch_every == 0
        local = (t % switch_every + 1).astype(jnp.float32)  # Adam's count since the switch
        c1, c2 = 1 - b1**local, 1 - b2**local

        def adam(g: jax.Array, m: jax.Array, v: jax.Array, p: Any) -> tuple[jax.Array, ...]:
            m = jnp.where(reset, 0.0, m) * b1 + (1 - b1) * g
            v = jnp.where(reset, 0.0, v) * b2 + (1 - b2) * g * g
            u = (m / c1) / (jnp.sqrt(v / c2) + eps)
            if weight_decay:
                u = u + weight_decay * p.astype(jnp.float32)
            return u, m, v

        def stacked(g: jax.Array, m: jax.Array, v: jax.Array, p: Any) -> tuple[jax.Array, ...]:
            n = m.shape[0]
            j = block - blocks.first_layer_block  # the layer block, when one is active
            is_layers = (j >= 0) & (j < blocks.num_layer_blocks)
            lo = j * bs
            hi = jnp.minimum(lo + bs, blocks.num_layers)
            start_row = jnp.clip(lo, 0, g.shape[0] - n)
            rows = start_row + jnp.arange(n)
            on = (rows >= lo) & (rows < hi) & is_layers
            on = on.reshape((n,) + (1,) * (g.ndim - 1))
            take = lambda x: jax.lax.dynamic_slice_in_dim(x, start_row, n, 0).astype(jnp.float32)
            ps = None if p is None else take(p)
            u, m_new, v_new = adam(jnp.where(on, take(g), 0.0), m, v, ps)
            u = jnp.where(on, u, 0.0).astype(g.dtype)
            full = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(g), u, start_row, 0)
            return full, jnp.where(on, m_new, 0.0), jnp.where(on, v_new, 0.0)

        def extra(g: jax.Array, m: jax.Array, v: jax.Array, p: Any, index: int):
            on = block == index
            u, m_new, v_new = adam(g.astype(jnp.float32), m, v, p)
            zero = jnp.zeros_like(m)
            return (
                jnp.where(on, u, 0.0).astype(g.dtype),
                jnp.where(on, m_new, zero),
                jnp.where(on, v_new, zero),
            )

        flat_g, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat_m = treedef.flatten_up_to(state.mu)
        flat_v = treedef.flatten_up_to(state.nu)
        flat_p = treedef.flatten_up_to(params) if params is not None else [None] * len(flat_g)
        outs, mus, nus = [], [], []
        for (kp, g), m, v, p in zip(flat_g, flat_m, flat_v, flat_p, strict=True):
            index = extra_block_of.get(path_str(kp))
            u, m, v = stacked(g, m, v, p) if index is None else extra(g, m, v, p, index)
            outs.append(u)
            mus.append(m)
            nus.append(v)
        new_state = BadamState(
            optax.safe_increment(t), treedef.unflatten(mus), treedef.unflatten(nus)
        )
        return treedef.unflatten(outs), new_state

    return optax.GradientTransformation(init, update)


def blocks_for(num_layers: int, block_size: int, embedding: bool, head: bool) -> Blocks:
    """The block table of a decoder with `num_layers` stacked layers."""
    return Blocks(num_layers, max(1, min(block_size, num_layers)), embedding, head)
