"""Training with each method: the loss goes down, gradients reach only the trainable arrays, and
the jitted LoRA/DoRA train step never forms a dense `A @ B` [in, out] product."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import models, peft

KEY = jax.random.PRNGKey(0)
RANK = 4
BATCH = np.random.RandomState(0).randint(0, 128, (4, 16)).astype(np.int32)

METHODS = {
    "lora": lambda p: peft.lora(p, "all-linear", rank=RANK, alpha=8, dropout=0.1, rng=KEY),
    "dora": lambda p: peft.dora(p, ["q_proj", "v_proj", "down_proj"], rank=RANK, alpha=8, rng=KEY),
    "adapter": lambda p: peft.adapter(p, bottleneck=8, rng=KEY),
    "pissa": lambda p: peft.pissa(p, ["q_proj", "v_proj", "up_proj"], rank=RANK, rng=KEY),
    "freeze": lambda p: peft.freeze(p, trainable_layers=1, extra_modules=["norm"]),
}


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return models.load(tiny_checkpoint("llama"))


def lm_loss(model, params, ids):
    logits = model.apply(params, ids[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def make_step(model, optimizer):
    """A plain optax step with gradients w.r.t. the whole tree: `stop_frozen` zeroes them on
    frozen arrays and layers, `multi_transform` over `param_labels` sets their updates to zero."""

    @jax.jit
    def step(params, opt_state, ids, rng):
        def loss_fn(p):
            return lm_loss(model, peft.with_dropout_rng(peft.stop_frozen(p), rng), ids)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    return step


def with_random_b(params):
    """B != 0 so that every LoRA/DoRA factor has a nonzero gradient at the first step."""

    def fill(x):
        if isinstance(x, peft.LoraWeight | peft.DoraWeight) and not getattr(
            x, "residual_base", False
        ):
            return x.replace(lora_b=0.02 * jax.random.normal(KEY, x.lora_b.shape))
        return x

    return jax.tree.map(fill, params, is_leaf=lambda x: isinstance(x, peft.AdapterLeaf))


def check_gradients(params, grads) -> None:
    """Nonzero exactly on trainable arrays (and, in partly trainable leaves, trainable layers)."""
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    flat_m = jax.tree.leaves(peft.trainable_mask(params))
    masks = peft.layer_trainable_mask(params)
    by_path = dict(jax.tree_util.tree_leaves_with_path(masks, is_leaf=lambda x: x is None))
    assert len(flat_g) == len(flat_m)
    for (path, g), trainable in zip(flat_g, flat_m, strict=True):
        layers = by_path[path]
        name = jax.tree_util.keystr(path)
        norms = np.abs(np.asarray(g)).reshape(g.shape[0], -1).max(axis=-1)
        if not trainable:
            assert norms.max() == 0, name
        elif layers is None:
            assert norms.min() > 0, name
        else:
            assert (norms[layers] > 0).all() and (norms[~layers] == 0).all(), name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_only_its_parameters(llama, method):
    model, params = llama
    adapted = with_random_b(METHODS[method](params))
    labels = peft.param_labels(adapted)
    optimizer = optax.multi_transform(
        {
            "frozen": optax.set_to_zero(),
            **{k: optax.adam(1e-2) for k in ("lora_a", "lora_b", "dora_magnitude")},
            **{k: optax.adam(1e-2) for k in ("adapter", "trainable")},
        },
        labels,
    )
    opt_state = optimizer.init(adapted)
    step = make_step(model, optimizer)
    ids = jnp.asarray(BATCH)
    trained, losses = adapted, []
    for i in range(8):
        trained, opt_state, loss, grads = step(trained, opt_state, ids, jax.random.PRNGKey(i))
        if i == 0:
            check_gradients(adapted, grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses
    frozen = jax.tree.leaves(
        jax.tree.map(lambda x, m: None if m else x, adapted, peft.trainable_mask(adapted))
    )
    still = jax.tree.leaves(
        jax.tree.map(lambda x, m: None if m else x, trained, peft.trainable_mask(adapted))
    )
    for before, after in zip(frozen, still, strict=True):
        np.testing.assert_array_equal(after, before)
    if method == "freeze":  # layer 0 of a partly trainable stacked leaf did not move
        before = params["layers"]["mlp"]["down_proj"]["kernel"]
        after = trained["layers"]["mlp"]["down_proj"]["kernel"]
        np.testing.assert_array_equal(after[0], before[0])
        assert not np.array_equal(after[1], before[1])


def low_rank_products(jaxpr, rank: int, shapes: set[tuple[int, int]]) -> list[str]:
    """dot_generals contracting over `rank` that produce an [in, out] (or [out, in]) block."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = tuple(eqn.outvars[0].aval.shape)
            if any(lhs[d] == rank for d in contract) and out[-2:] in shapes:
                found.append(str(eqn))
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += low_rank_products(inner, rank, shapes)
    return found


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_train_step_never_forms_the_dense_update(llama, method):
    model, params = llama
    adapted = METHODS[method](params)
    kernels = [
        x
        for x in jax.tree.leaves(adapted, is_leaf=lambda x: isinstance(x, peft.AdapterLeaf))
        if isinstance(x, peft.AdapterLeaf)
    ]
    shapes = {tuple(k.base.shape[-2:]) for k in kernels} | {
        tuple(k.base.shape[-2:])[::-1] for k in kernels
    }
    trainable, rest = peft.split_trainable(adapted)
    ids = jnp.asarray(BATCH)

    def grad_fast(t):
        return jax.grad(lambda t: lm_loss(model, peft.combine(t, rest), ids))(t)

    def grad_dense(t):  # the universal path materialises W + sAB: the detector must see it
        apply = peft.wrap(model.apply)
        return jax.grad(lambda t: jnp.mean(apply(peft.combine(t, rest), ids[:, :-1])))(t)

    assert low_rank_products(jax.make_jaxpr(grad_dense)(trainable).jaxpr, RANK, shapes)
    assert low_rank_products(jax.make_jaxpr(grad_fast)(trainable).jaxpr, RANK, shapes) == []
