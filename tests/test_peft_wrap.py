"""The universal path: the same transforms on a user's own linen and NNX models via peft.wrap."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtune import peft

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
Y = jnp.sin(X @ jax.random.normal(jax.random.PRNGKey(2), (6, 3)))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.tanh(nn.Dense(12)(x)))


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 12, rngs=rngs)
        self.out = nnx.Linear(12, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def fit(apply, params, steps: int = 30) -> tuple[list[float], object]:
    """Adam on the trainable part only; returns the losses and the final params."""
    trainable, rest = peft.split_trainable(params)
    opt = optax.adam(3e-2)
    state = opt.init(trainable)

    @jax.jit
    def step(trainable, state):
        loss_fn = lambda t: jnp.mean((apply(peft.combine(t, rest), X) - Y) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, state = opt.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state, loss

    losses = []
    for _ in range(steps):
        trainable, state, loss = step(trainable, state)
        losses.append(float(loss))
    return losses, peft.combine(trainable, rest)


def check_adapted_model(apply, params, adapted) -> None:
    """Same function at init, learns, and only adapter arrays move."""
    np.testing.assert_allclose(apply(adapted, X), apply(params, X), atol=1e-6)
    losses, trained = fit(apply, adapted)
    assert losses[-1] < 0.5 * losses[0], losses
    frozen = [
        x
        for x, m in zip(
            jax.tree.leaves(trained), jax.tree.leaves(peft.trainable_mask(adapted)), strict=True
        )
        if not m
    ]
    original = jax.tree.leaves(params)
    assert len(frozen) == len(original)  # the base arrays, untouched
    for a, b in zip(frozen, original, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(apply(peft.merge(trained), X), apply(trained, X), atol=1e-5)


def test_linen_model_with_lora_and_dora():
    model = LinenMLP()
    variables = model.init(KEY, X)
    assert peft.select(variables, "all-linear") == [
        "params/Dense_0/kernel",
        "params/Dense_1/kernel",
    ]
    apply = peft.wrap(model.apply)
    check_adapted_model(apply, variables, peft.lora(variables, "all-linear", rank=2, rng=KEY))
    check_adapted_model(apply, variables, peft.dora(variables, ["Dense_0"], rank=2, rng=KEY))


def test_nnx_model_with_lora():
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
    adapted = peft.lora(state, ["hidden", "out"], rank=2, rng=KEY)
    assert isinstance(adapted["hidden"]["kernel"].get_value(), peft.LoraWeight)
    apply = peft.wrap(lambda s, x: nnx.merge(graphdef, s)(x))
    check_adapted_model(apply, state, adapted)
