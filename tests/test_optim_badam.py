"""BAdam: block orders, only the active block moves (the rest bit-identical), state the size of
one block, and the parameter trajectory of the `badam` package's BlockOptimizer over torch AdamW
on the same weights and gradients (through several block switches)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import optim

L, D, V = 5, 6, 11


def config(**badam):
    c = optim.default_config()
    c.update(name="badam", lr=1e-2, schedule="constant", max_grad_norm=0.0)
    c.badam.update(badam)
    return c


def test_block_orders():
    seq = lambda mode, **kw: [int(optim.active_block(t, 4, 2, mode, **kw)) for t in range(12)]
    assert seq("ascending") == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1]
    assert seq("descending") == [3, 3, 2, 2, 1, 1, 0, 0, 3, 3, 2, 2]
    assert seq("ascending", start=2) == [2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3]
    assert seq("fixed", start=1) == [1] * 12
    switches = [int(optim.active_block(2 * k, 4, 2, "random", seed=3)) for k in range(12)]
    for epoch in range(3):  # every pass over the blocks is a permutation
        assert sorted(switches[4 * epoch : 4 * epoch + 4]) == [0, 1, 2, 3]
    assert switches[:4] != switches[4:8] or switches[4:8] != switches[8:]


def stacked_tree(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "embed_tokens": {"embedding": jax.random.normal(k[0], (V, D))},
        "layers": {
            "fc": {
                "kernel": jax.random.normal(k[1], (L, D, D)),
                "bias": jax.random.normal(k[2], (L, D)),
            },
            "norm": {"scale": jax.random.normal(k[3], (L, D))},
        },
        "lm_head": {"kernel": jax.random.normal(k[4], (D, V))},
    }


@pytest.mark.parametrize("block_size", [1, 2])
def test_only_the_active_block_moves_and_state_is_one_block(block_size):
    K = 2
    c = config(switch_every=K, block_size=block_size)
    c.weight_decay = 0.1
    params = stacked_tree()
    tx = optim.build(c, params)
    state = tx.init(params)
    layer_bytes = sum(
        x.nbytes // L for x in jax.tree.leaves(params["layers"])
    )  # fc kernel + bias + norm of one layer
    assert sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim) == 2 * block_size * layer_bytes
    blocks = -(-L // block_size)
    update = jax.jit(tx.update)
    for t in range(2 * blocks * K):
        grads = jax.tree.map(lambda x, t=t: jnp.ones_like(x) * (t + 1), params)
        updates, state = update(grads, state, params)
        new = optax.apply_updates(params, updates)
        lo = (t // K) % blocks * block_size
        active = set(range(lo, min(lo + block_size, L)))
        for leaf_old, leaf_new in zip(
            jax.tree.leaves(params["layers"]), jax.tree.leaves(new["layers"]), strict=True
        ):
            for layer in range(L):
                same = np.array_equal(np.asarray(leaf_old[layer]), np.asarray(leaf_new[layer]))
                assert same != (layer in active), (t, layer)
        for key in ("embed_tokens", "lm_head"):  # in no block: frozen
            assert jax.tree.all(jax.tree.map(np.array_equal, params[key], new[key]))
        if t % K == 0:  # Adam restarts on each switch: the first step is lr * sign(g)
            u = np.asarray(updates["layers"]["fc"]["kernel"][min(active)])
            wd = 0.1 * np.asarray(params["layers"]["fc"]["kernel"][min(active)])
            np.testing.assert_allclose(u, -1e-2 * (1 + wd), rtol=1e-5)
        params = new


def torch_net(params):
    import torch

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(V, D)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(D, D, bias=False) for _ in range(L)])

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = torch.nn.Linear(D, V, bias=False)

    net = Net()
    with torch.no_grad():
        net.model.embed_tokens.weight.copy_(
            torch.tensor(np.asarray(params["embed_tokens"]["embedding"]))
        )
        for i, layer in enumerate(net.model.layers):
            layer.weight.copy_(torch.tensor(np.asarray(params["layers"]["fc"]["kernel"][i]).T))
        net.lm_head.weight.copy_(torch.tensor(np.asarray(params["lm_head"]["kernel"]).T))
    return net


def torch_grads(t):
    rng = np.random.default_rng(100 + t)
    return {
        "model.embed_tokens.weight": rng.normal(size=(V, D)),
        **{f"model.layers.{i}.weight": rng.normal(size=(D, D)) for i in range(L)},
        "lm_head.weight": rng.normal(size=(V, D)),
    }


def as_jax_grads(g):
    return {
        "embed_tokens": {"embedding": jnp.asarray(g["model.embed_tokens.weight"], jnp.float32)},
        "layers": {
            "fc": {
                "kernel": jnp.asarray(
                    np.stack([g[f"model.layers.{i}.weight"].T for i in range(L)]), jnp.float32
                ),
            }
        },
        "lm_head": {"kernel": jnp.asarray(g["lm_head.weight"].T, jnp.float32)},
    }


@pytest.mark.parametrize("mode", ["ascending", "descending"])
def test_trajectory_equals_badam_package(mode):
    import torch
    from badam import BlockOptimizer

    params = stacked_tree(seed=1)
    # Only decayed weights: the package's no-decay group gets weight_decay back from
    # `**defaults` (listed after it), so it decays biases, which jaxtune does not.
    del params["layers"]["norm"], params["layers"]["fc"]["bias"]
    K, lr, wd = 2, 1e-2, 0.1
    net = torch_net(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = BlockOptimizer(
            torch.optim.AdamW(
                net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd
            ),
            list(net.named_parameters()),
            switch_block_every=K,
            switch_mode=mode,
            include_embedding=True,
            include_lm_head=True,
            verbose=0,
        )
    # BAdam's first block runs K-1 steps (it switches when (step + 1) % K == 0 after counting
    # the step), the others K; starting its counter at -1 gives every block K steps, as here.
    ref.global_step = -1

    c = config(switch_every=K, switch_mode=mode, include_embedding=True, include_lm_head=True)
    c.weight_decay = wd
    tx = optim.build(c, params)
    state, update = tx.init(params), jax.jit(tx.update)
    named = dict(net.named_parameters())
    for t in range((L + 2) * K + 2):  # blocks: embedding, 5 layers, head; then wrap around
        g = torch_grads(t)
        for name, p in named.items():
            p.grad = torch.tensor(g[name], dtype=torch.float32) if p.requires_grad else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.step()
        updates, state = update(as_jax_grads(g), state, params)
        params = optax.apply_updates(params, updates)
        want = as_jax_grads({n: p.detach().numpy() for n, p in named.items()})
        for got, exp in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(exp), atol=2e-6, err_msg=t)
