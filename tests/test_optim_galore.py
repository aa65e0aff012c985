"""GaLore: low-rank state, the paper's update on a fixed gradient (numpy), the projector and the
optimizer of the `galore-torch` package (on the torch layout [out, in] of the same weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import optim
from jaxtune.optim.galore import LEFT, side

B1, B2, EPS = 0.9, 0.999, 1e-8
# jaxtune kernels [in, out]: tall, wide, square; and a stacked (L, in, out) one.
SHAPES = [(24, 10), (10, 24), (12, 12), (3, 16, 20)]


def grads_for(shape, seed):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def numpy_galore_first_update(g: np.ndarray, rank: int, scale: float) -> np.ndarray:
    """Algorithm 1 at t = 1 on one matrix (m, n) = (in, out): P from the SVD of G on the side
    galore-torch picks for the torch weight G^T, Adam on R, alpha * P N back."""
    m, n = g.shape
    u, _, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    r = min(rank, m, n)
    left = n >= m  # galore-torch "std" multiplies the torch gradient (n, m) on the right
    r_t = u[:, :r].T @ g if left else g @ vt[:r].T
    m1, v1 = (1 - B1) * r_t, (1 - B2) * r_t**2
    n_t = (m1 / (1 - B1)) / (np.sqrt(v1 / (1 - B2)) + EPS)
    return scale * (u[:, :r] @ n_t if left else n_t @ vt[:r])


@pytest.mark.parametrize("shape", SHAPES)
def test_state_is_low_rank_and_first_update_is_the_papers(shape):
    rank, scale = 4, 0.25
    tx = optim.galore(rank, update_proj_gap=10, scale=scale, b1=B1, b2=B2, eps=EPS)
    params = {"w": jnp.zeros(shape)}
    state = tx.init(params)
    lead, (m, n) = shape[:-2], shape[-2:]
    expect_low = lead + ((rank, n) if side(shape) == LEFT else (m, rank))
    assert state.mu["w"].shape == state.nu["w"].shape == expect_low
    assert state.projector["w"].shape == lead + ((m, rank) if side(shape) == LEFT else (rank, n))
    assert optim.tree_bytes(state) < 2 * m * n * 4 * max(1, int(np.prod(lead)))

    g = grads_for(shape, 0)
    updates, state = jax.jit(tx.update)({"w": g}, state)
    got = np.asarray(updates["w"]).reshape((-1, m, n))
    want = [numpy_galore_first_update(x, rank, scale) for x in np.asarray(g).reshape((-1, m, n))]
    # fp32 SVD here, float64 there: entries are O(scale), agreement to ~1e-5 of that
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-5)


def test_projector_refreshes_every_T_steps():
    T, shape = 3, (16, 20)
    tx = optim.galore(4, update_proj_gap=T, scale=1.0)
    update = jax.jit(tx.update)
    state = tx.init({"w": jnp.zeros(shape)})
    seen = []
    for step in range(2 * T + 1):
        g = grads_for(shape, step)
        _, state = update({"w": g}, state)
        p = np.asarray(state.projector["w"])
        seen.append(p)
        if step % T == 0:  # P spans the top-4 left singular vectors of this step's gradient
            u = np.linalg.svd(np.asarray(g), full_matrices=False)[0][:, :4]
            np.testing.assert_allclose(p @ p.T, u @ u.T, atol=1e-5)
    changed = [not np.array_equal(seen[i], seen[i - 1]) for i in range(1, len(seen))]
    assert changed == [(i % T == 0) for i in range(1, len(seen))]


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right"])
@pytest.mark.parametrize("torch_shape", [(20, 12), (12, 20), (16, 16)])
def test_projection_equals_galore_torch(proj_type, torch_shape):
    """Same gradient, torch layout (out, in) there and (in, out) here: the projected-back
    gradient (sign-free) and the low-rank gradient up to the sign of each component."""
    import torch
    from galore_torch.galore_projector import GaLoreProjector

    rank, scale = 5, 0.5
    g_t = np.random.default_rng(0).normal(size=torch_shape).astype(np.float32)
    ref = GaLoreProjector(rank, update_proj_gap=10, scale=scale, proj_type=proj_type)
    low_t = ref.project(torch.from_numpy(g_t), 0)
    back_t = ref.project_back(low_t).numpy()

    g = jnp.asarray(g_t.T)
    where = side(g.shape, proj_type)
    p = optim.fit_projector(g, rank, proj_type)
    low = optim.project(p, g, where)
    back = scale * optim.project_back(p, low, where)
    np.testing.assert_allclose(np.asarray(back), back_t.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(low)), np.abs(low_t.numpy().T), atol=1e-4)


@pytest.mark.parametrize("torch_shape", [(20, 12), (12, 20)])
def test_optimizer_equals_galore_adamw(torch_shape):
    """galore-torch's GaLoreAdamW and optim.build(name='galore') over 5 steps of fixed
    gradients within one projector window (eps 1e-12: the two place eps differently)."""
    import torch
    from galore_torch import GaLoreAdamW

    rng = np.random.default_rng(1)
    w_t = rng.normal(size=torch_shape).astype(np.float32)
    grads_t = [rng.normal(size=torch_shape).astype(np.float32) for _ in range(5)]
    lr, rank, scale = 1e-2, 4, 0.25

    weight = torch.nn.Parameter(torch.from_numpy(w_t.copy()))
    group = dict(params=[weight], rank=rank, update_proj_gap=100, scale=scale, proj_type="std")
    ref = GaLoreAdamW([group], lr=lr, betas=(B1, B2), eps=1e-12, weight_decay=0.0)

    c = optim.default_config()
    c.update(name="galore", lr=lr, schedule="constant", max_grad_norm=0.0, eps=1e-12)
    c.galore.update(rank=rank, update_proj_gap=100, scale=scale)
    params = {"layer": {"kernel": jnp.asarray(w_t.T)}}
    tx = optim.build(c, params)
    state, update = tx.init(params), jax.jit(tx.update)
    for g_t in grads_t:
        weight.grad = torch.from_numpy(g_t.copy())
        ref.step()
        updates, state = update({"layer": {"kernel": jnp.asarray(g_t.T)}}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(
            np.asarray(params["layer"]["kernel"]), weight.detach().numpy().T, atol=2e-6
        )
    assert not np.allclose(np.asarray(params["layer"]["kernel"]), w_t.T)
