"""On a real tiny Llama checkpoint: every optimizer lowers the loss in a few steps (full
fine-tuning, LoRA with and without LoRA+, pure bf16), and gradient
accumulation over micro-batches equals one large batch (mean token loss, uneven token counts)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import models, optim, peft
from jaxtune.losses.lm import lm_loss

STEPS = 8


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return models.load(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, size=(4, 17)).astype(np.int32)
    mask = np.ones((4, 16), np.float32)
    mask[1, :11] = 0.0  # uneven counted tokens per row: 16, 5, 16, 9
    mask[3, :7] = 0.0
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask}


def loss_sum(model, params, batch):
    """(sum of the counted token NLLs, number of counted tokens)."""
    logits = model.apply(params, batch["input_ids"])
    return lm_loss(logits, batch["targets"], batch["loss_mask"])


@functools.cache
def grad_fn(model):
    """(trainable, frozen, combine, batch) -> (mean token loss, gradient), jitted once."""

    def mean_loss(trainable, frozen, batch, combine):
        total, count = loss_sum(model, combine(trainable, frozen), batch)
        return total / count

    return jax.jit(jax.value_and_grad(mean_loss), static_argnums=3)


def full(trainable, frozen):
    return trainable


def train(model, tx, trainable, frozen, batch, combine=full, steps=STEPS):
    state, update, grads_of = tx.init(trainable), jax.jit(tx.update), grad_fn(model)
    losses = []
    for _ in range(steps):
        loss, grads = grads_of(trainable, frozen, batch, combine)
        updates, state = update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        losses.append(float(loss))
    return losses, trainable, state


def config(name, lr, **changes):
    c = optim.default_config()
    c.update(name=name, lr=lr, schedule="constant", **changes)
    c.galore.update(rank=8, update_proj_gap=4)
    c.badam.update(switch_every=2)
    return c


@pytest.mark.parametrize(
    "name,lr,drop",
    [
        ("adamw", 1e-2, 1.0),
        ("sgd", 2.0, 0.3),
        ("adafactor", 1e-2, 1.0),
        ("galore", 1e-2, 1.0),
        ("badam", 3e-2, 0.3),
    ],
)
def test_full_finetuning_lowers_the_loss(llama, batch, name, lr, drop):
    model, params = llama
    losses, _, _ = train(model, optim.build(config(name, lr), params), params, {}, batch)
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - drop, (name, losses)


def test_lora_with_loraplus_lowers_the_loss_faster(llama, batch):
    model, params = llama
    lora = peft.lora(params, "all-linear", rank=4, alpha=8, rng=jax.random.PRNGKey(0))
    trainable, frozen = peft.split_trainable(lora)
    labels, _ = peft.split_trainable(peft.param_labels(lora))
    drop = {}
    for ratio in (0.0, 16.0):  # same lr for A: B learns 16x faster with LoRA+
        tx = optim.build(config("adamw", 1e-3, loraplus_ratio=ratio), trainable, labels=labels)
        losses, _, _ = train(model, tx, trainable, frozen, batch, peft.combine)
        drop[ratio] = losses[0] - losses[-1]
    assert drop[0.0] > 0.05 and drop[16.0] > 0.3 and drop[16.0] > 2 * drop[0.0], drop


def test_pure_bf16_lowers_the_loss_with_bf16_params_and_state(tiny_checkpoint, batch):
    """LlamaFactory's pure_bf16: bf16 params and optimizer state, updates computed in fp32.
    (`bf16` mixed precision changes only the model's compute dtype: fp32 params and state.)"""
    mode = "pure_bf16"
    param_dtype, compute = optim.model_dtypes(mode)
    model, params = models.load(tiny_checkpoint("llama"), param_dtype, compute_dtype=compute)
    tx = optim.build(config("adamw", 1e-2, mixed_precision=mode), params)
    losses, new, state = train(model, tx, params, {}, batch)
    assert losses[-1] < losses[0] - 1.0, losses
    assert {x.dtype for x in jax.tree.leaves(new)} == {jnp.dtype(param_dtype)}
    float_state = {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert float_state == {jnp.dtype(optim.state_dtype(mode))}


def micro_batches(batch, k):
    return [jax.tree.map(lambda x, i=i: x[i::k], batch) for i in range(k)]


def test_accumulation_equals_one_large_batch(llama, batch):
    """k=2 micro-batches with different token counts: the gradients of each micro-batch's loss
    sum over the large batch's token count, summed (mean=False), are what the optimizer sees for
    the large batch's mean token loss; mean=True (optim.grad_accum_steps) equals it when the
    counts are equal. SGD with lr 1 shows the gradient the inner optimizer receives."""
    model, params = llama
    mean_grad = grad_fn(model)  # compiled once per batch shape, shared with the tests above

    def grads_of(params, b, denominator):
        """Gradient of (the micro-batch's loss sum / denominator)."""
        _, g = mean_grad(params, {}, b, full)
        return jax.tree.map(lambda x: x * (b["loss_mask"].sum() / denominator), g)

    sgd = optim.build(config("sgd", 1.0, max_grad_norm=0.0), params)

    def accumulated(tx, micro, denominators):
        state, update = tx.init(params), jax.jit(tx.update)
        for i, (b, n) in enumerate(zip(micro, denominators, strict=True)):
            updates, state = update(grads_of(params, b, n), state, params)
            if i < len(micro) - 1:  # nothing moves before the last micro-batch
                assert not any(jnp.any(u) for u in jax.tree.leaves(updates))
        return updates

    def check(updates, large_batch):
        want = grads_of(params, large_batch, large_batch["loss_mask"].sum())
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
            g = np.asarray(g)  # fp32 sums in another order: 1e-5 of the leaf's largest entry
            np.testing.assert_allclose(np.asarray(u), -g, rtol=1e-5, atol=1e-5 * np.abs(g).max())

    micro = micro_batches(batch, 2)
    n = batch["loss_mask"].sum()
    check(accumulated(optim.accumulate(sgd, 2, mean=False), micro, [n, n]), batch)

    even = dict(batch, loss_mask=np.ones_like(batch["loss_mask"]))
    micro = micro_batches(even, 2)
    tx = optim.build(config("sgd", 1.0, max_grad_norm=0.0, grad_accum_steps=2), params)
    check(accumulated(tx, micro, [m["loss_mask"].sum() for m in micro]), even)
