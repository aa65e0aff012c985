"""PiSSA (Meng et al. 2024): LoRA initialised with the principal singular components of W.

With W = U S V^T ([in, out] = [in, k] [k] [k, out]) and s the LoRA scale:

    lora_a = U_r sqrt(S_r / s)      lora_b = sqrt(S_r / s) V_r^T      base = W - s lora_a lora_b

so the adapted model equals the original at step 0 and training moves the principal directions.
`niter=None` takes an exact SVD; `niter=n` a randomized SVD (Halko et al. 2011, as PEFT's
`pissa_niter_n`) with n power iterations, much faster on large kernels.

The base of a PiSSA leaf is the residual, not the checkpoint's weight: before writing a PEFT
adapter for the original model, `pissa_to_lora(trained, initial)` turns it into a rank-2r LoRA
over the original weight (PEFT's `path_initial_model_for_weight_conversion`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.peft.errors import TargetError
from jaxtune.peft.lora import LoraWeight, check_rank, check_unadapted, leaf_rngs, scaling
from jaxtune.peft.select import Targets, is_weight_leaf, map_selected, path_str, select

OVERSAMPLE = 8


def randomized_svd(
    w: jax.Array, rank: int, niter: int, rng: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-`rank` SVD of w [..., m, n] by subspace iteration: (U [..., m, r], S, Vt [..., r, n])."""
    m, n = w.shape[-2:]
    q = min(rank + OVERSAMPLE, m, n)
    probe = jax.random.normal(rng, (*w.shape[:-2], n, q), w.dtype)
    basis = jnp.linalg.qr(w @ probe)[0]  # [..., m, q]
    wt = jnp.swapaxes(w, -1, -2)
    for _ in range(niter):
        basis = jnp.linalg.qr(wt @ basis)[0]  # [..., n, q]
        basis = jnp.linalg.qr(w @ basis)[0]  # [..., m, q]
    small = jnp.swapaxes(basis, -1, -2) @ w  # [..., q, n]
    u, s, vt = jnp.linalg.svd(small, full_matrices=False)
    return (basis @ u)[..., :rank], s[..., :rank], vt[..., :rank, :]


def principal_factors(
    w: jax.Array, rank: int, scale: float, niter: int | None, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(lora_a [..., in, r], lora_b [..., r, out]) with scale * a @ b the rank-r part of w."""
    w32 = w.astype(jnp.float32)
    if niter is None:
        u, s, vt = jnp.linalg.svd(w32, full_matrices=False)
        u, s, vt = u[..., :rank], s[..., :rank], vt[..., :rank, :]
    else:
        u, s, vt = randomized_svd(w32, rank, niter, rng)
    root = jnp.sqrt(s / scale)  # [..., r]
    return u * root[..., None, :], root[..., :, None] * vt


def pissa(
    params: Any,
    targets: Targets,
    *,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    rslora: bool = False,
    niter: int | None = None,
    rng: jax.Array,
    dtype: Any = jnp.float32,
) -> Any:
    """LoRA leaves holding W's top-`rank` singular components (alpha defaults to rank: s = 1).

    The base must be a plain float array (quantize the residual afterwards, as PEFT advises)."""
    paths = select(params, targets)
    keys = leaf_rngs(rng, paths)
    scale = scaling(rank if alpha is None else alpha, rank, rslora)

    def wrap(path: str, w: Any) -> LoraWeight:
        check_unadapted(path, w)
        if is_weight_leaf(w) or not jnp.issubdtype(w.dtype, jnp.floating):
            raise TargetError(
                f"{path}: PiSSA needs a float weight to decompose, found {type(w).__name__}; "
                "apply peft.pissa before quantizing"
            )
        check_rank(path, w.shape, rank)
        a, b = principal_factors(w, rank, scale, niter, keys[path])
        residual = (w.astype(jnp.float32) - scale * (a @ b)).astype(w.dtype)
        return LoraWeight(
            base=residual,
            lora_a=a.astype(dtype),
            lora_b=b.astype(dtype),
            scale=scale,
            dropout=float(dropout),
            residual_base=True,
        )

    return map_selected(params, paths, wrap)


def pissa_to_lora(trained: Any, initial: Any) -> Any:
    """PiSSA leaves -> LoRA leaves of rank 2r over the original weight, same adapted model.

    W_orig = base + s A0 B0, so W_orig + s [A | A0] [B ; -B0] = base + s A B."""
    flat_initial = dict(
        (path_str(kp), leaf)
        for kp, leaf in jax.tree_util.tree_flatten_with_path(initial, is_leaf=is_weight_leaf)[0]
    )

    def convert(keypath: Any, leaf: Any) -> Any:
        if not (isinstance(leaf, LoraWeight) and leaf.residual_base):
            return leaf
        path = path_str(keypath)
        start = flat_initial.get(path)
        if not isinstance(start, LoraWeight) or start.lora_a.shape != leaf.lora_a.shape:
            raise TargetError(f"{path}: `initial` has no PiSSA leaf of the same shape here")
        original = (leaf.base.astype(jnp.float32) + start.delta()).astype(leaf.base.dtype)
        return dataclasses.replace(
            leaf,
            base=original,
            lora_a=jnp.concatenate([leaf.lora_a, start.lora_a], axis=-1),
            lora_b=jnp.concatenate([leaf.lora_b, -start.lora_b], axis=-2),
            residual_base=False,
        )

    return jax.tree_util.tree_map_with_path(convert, trained, is_leaf=is_weight_leaf)
