"""GaLore (Zhao et al. 2024): Adam on a low-rank projection of the gradient of weight matrices.

Algorithm 1 of the paper, for a weight W (m, n) with gradient G_t at step t:

    every T steps:  U, S, V^T = SVD(G_t);  P = the first r singular vectors
    R_t = project(P, G_t)                        low rank: (r, n) or (m, r)
    M_t = b1 M + (1 - b1) R_t;  V_t = b2 V + (1 - b2) R_t^2
    N_t = M^_t / (sqrt(V^_t) + eps)              bias-corrected, as Adam
    update = alpha * project_back(P, N_t)        then lr (and weight decay) as AdamW

The state of a weight is P plus two low-rank moments, never m x n. Stacked weights (L, m, n) of a
jaxtune decoder get one projector per layer (batched SVD). Moments are not reset when P changes
(the paper and galore-torch keep them).

Which side is projected follows galore-torch's `proj_type` on the torch weight [out, in] (the
transpose of a jaxtune kernel [in, out]): "std" projects the smaller dimension (ties: torch's
right side), "reverse_std" the larger, "left"/"right" always that side of the torch weight. So a
jaxtune kernel G (m=in, n=out) gets P = U[:, :r] (m, r), R = P^T G (r, n) when torch would
multiply on the right, and P = V^T[:r] (r, n), R = G P^T (m, r) otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

LEFT, RIGHT = "left", "right"  # in jaxtune's [in, out] layout


class GaloreState(NamedTuple):
    count: jax.Array  # int32: updates done (a new projector when count % T == 0)
    projector: Any  # per weight: (..., m, r) or (..., r, n)
    mu: Any  # low-rank first moment: (..., r, n) or (..., m, r)
    nu: Any  # low-rank second moment


def side(shape: tuple[int, ...], proj_type: str = "std") -> str:
    """LEFT or RIGHT for a jaxtune kernel of `shape` (..., in, out) under galore-torch's rule."""
    m, n = shape[-2], shape[-1]
    torch_right = {  # galore-torch on the torch weight of shape (n, m)
        "std": n >= m,
        "reverse_std": n < m,
        "right": True,
        "left": False,
    }[proj_type]
    return LEFT if torch_right else RIGHT


def projector_shape(shape: tuple[int, ...], rank: int, proj_type: str) -> tuple[int, ...]:
    m, n = shape[-2], shape[-1]
    r = min(rank, m, n)
    lead = tuple(shape[:-2])
    return lead + ((m, r) if side(shape, proj_type) == LEFT else (r, n))


def low_rank_shape(shape: tuple[int, ...], rank: int, proj_type: str) -> tuple[int, ...]:
    m, n = shape[-2], shape[-1]
    r = min(rank, m, n)
    lead = tuple(shape[:-2])
    return lead + ((r, n) if side(shape, proj_type) == LEFT else (m, r))


def fit_projector(grad: jax.Array, rank: int, proj_type: str = "std") -> jax.Array:
    """P from the SVD of the (fp32) gradient: the top-r left or right singular vectors."""
    g = grad.astype(jnp.float32)
    u, _, vt = jnp.linalg.svd(g, full_matrices=False)
    r = min(rank, g.shape[-2], g.shape[-1])
    return u[..., :, :r] if side(g.shape, proj_type) == LEFT else vt[..., :r, :]


def project(p: jax.Array, g: jax.Array, where: str) -> jax.Array:
    """The low-rank gradient R: P^T G (LEFT, P (m, r)) or G P^T (RIGHT, P (r, n))."""
    g = g.astype(jnp.float32)
    pt = jnp.swapaxes(p, -1, -2).astype(jnp.float32)
    return pt @ g if where == LEFT else g @ pt


def project_back(p: jax.Array, low: jax.Array, where: str) -> jax.Array:
    """The full-size matrix of a low-rank one: P N (LEFT) or N P (RIGHT)."""
    p = p.astype(jnp.float32)
    return p @ low if where == LEFT else low @ p


def galore(
    rank: int,
    update_proj_gap: int,
    scale: float,
    proj_type: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """GaLore's projected Adam direction for every leaf of the tree (all (..., m, n) matrices).

    Chain it with weight decay and the learning rate, as `optim.build` does; the update has the
    sign of the gradient (scale_by_learning_rate negates it).
    """

    def init(params: Any) -> GaloreState:
        def proj(p: Any) -> jax.Array:
            return jnp.zeros(projector_shape(p.shape, rank, proj_type), jnp.float32)

        def low(p: Any) -> jax.Array:
            return jnp.zeros(low_rank_shape(p.shape, rank, proj_type), jnp.float32)

        return GaloreState(
            count=jnp.zeros((), jnp.int32),
            projector=jax.tree.map(proj, params),
            mu=jax.tree.map(low, params),
            nu=jax.tree.map(low, params),
        )

    def update(updates: Any, state: GaloreState, params: Any = None) -> tuple[Any, GaloreState]:
        del params
        refresh = state.count % update_proj_gap == 0

        def new_projector(g: jax.Array, p: jax.Array) -> jax.Array:
            return jax.lax.cond(
                refresh, lambda: fit_projector(g, rank, proj_type).astype(p.dtype), lambda: p
            )

        projector = jax.tree.map(new_projector, updates, state.projector)
        low = jax.tree.map(lambda p, g: project(p, g, side(g.shape, proj_type)), projector, updates)
        mu = jax.tree.map(lambda m, r: b1 * m + (1 - b1) * r, state.mu, low)
        nu = jax.tree.map(lambda v, r: b2 * v + (1 - b2) * r * r, state.nu, low)
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)

        def direction(p: jax.Array, m: jax.Array, v: jax.Array, g: jax.Array) -> jax.Array:
            n = (m / c1) / (jnp.sqrt(v / c2) + eps)
            full = project_back(p, n, side(g.shape, proj_type))
            return (scale * full).astype(g.dtype)

        out = jax.tree.map(direction, projector, mu, nu, updates)
        return out, GaloreState(count=count, projector=projector, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)
