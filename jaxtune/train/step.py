"""The jitted train and eval steps, shared by every stage.

    train_step(state, frozen, batch) -> (state, metrics)      state donated
    eval_step(params, frozen, batch) -> sums                  (total, weight, metric sums)

`frozen` holds the weights that do not train (the PEFT base, quantized leaves); `combine`
rebuilds the full params from it and the state's trainable params inside the step. The batch
[B, ...] may be split into `grad_accum` micro-batches that run one after the other in a scan:
gradients of the micro-batches' loss sums add up and are divided by the total weight once, so
accumulation equals one large batch (up to float rounding). A step whose loss or gradient is not
finite leaves params and optimizer state unchanged and reports `finite = 0`; the loop stops on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxtune.sharding import use_mesh
from jaxtune.train.stages import LossOutput, Stage
from jaxtune.train.state import TrainState

Combine = Callable[[Any, Any], Any]
PrepareParams = Callable[[Any, jax.Array], Any]


def reduce_metrics(out: LossOutput) -> dict[str, jax.Array]:
    """Sums -> reported values: loss = total / weight; metrics per their own count."""
    weight = out.weight.astype(jnp.float32)
    safe = jnp.maximum(weight, 1e-12)
    metrics = {"loss": jnp.where(weight == 0, 0.0, out.total / safe), "loss_tokens": weight}
    for name, value in out.metrics.items():
        if isinstance(value, tuple):
            num, den = value
            metrics[name] = num / jnp.maximum(den, 1e-12)
        else:
            metrics[name] = value / safe
    return metrics


def split_micro_batches(batch: Any, k: int) -> Any:
    """[B, ...] -> [k, B/k, ...] taking rows i, i+k, ... into micro-batch i (each device's rows
    stay on that device when B/devices is a multiple of k)."""

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def make_loss_and_grad(
    model: Any,
    stage: Stage,
    combine: Combine,
    prepare_params: PrepareParams | None,
    grad_accum: int,
) -> Callable[[Any, Any, Any, jax.Array], tuple[Any, LossOutput]]:
    """(trainable, frozen, batch, rng) -> (gradient of the loss *sum*, summed LossOutput)."""

    def micro_loss(trainable, frozen, micro, rng):
        params = combine(trainable, frozen)
        if prepare_params is not None:
            params = prepare_params(params, rng)
        out = stage.loss(model, params, micro, rng, True)
        return out.total, out

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def loss_and_grad(trainable, frozen, batch, rng):
        if grad_accum == 1:
            return grad_fn(trainable, frozen, batch, rng)
        micro = split_micro_batches(batch, grad_accum)
        first = jax.tree.map(lambda x: x[0], micro)
        grads0, out0 = jax.eval_shape(grad_fn, trainable, frozen, first, rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads0, out0))

        def body(acc, xs):
            m, i = xs
            g, out = grad_fn(trainable, frozen, m, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (g, out)), None

        (grads, out), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
        return grads, out

    return loss_and_grad


def make_train_step(
    model: Any,
    stage: Stage,
    optimizer: optax.GradientTransformation,
    *,
    batch_sharding: NamedSharding,
    state_shardings: Any,
    frozen_shardings: Any,
    rules: Any = None,
    combine: Combine = lambda trainable, frozen: trainable,
    prepare_params: PrepareParams | None = None,
    mask_updates: Callable[[Any, Any], Any] | None = None,
    grad_accum: int = 1,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted step with explicit in/out shardings (compiled once per batch structure).

    batch_sharding: the layout of every batch array's rows; rules: the logical-axis rules that
    activations are constrained with (jaxtune.sharding.use_mesh is entered around each call).
    mask_updates(updates, params): applied to the optimizer's updates (frozen layers).
    """
    mesh = batch_sharding.mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    loss_and_grad = make_loss_and_grad(model, stage, combine, prepare_params, grad_accum)

    def step(state: TrainState, frozen: Any, batch: Any):
        grads, out = loss_and_grad(state.params, frozen, batch, state.step_rng())
        weight = jnp.maximum(out.weight.astype(jnp.float32), 1e-12)
        grads = jax.tree.map(lambda g: g / weight.astype(g.dtype), grads)
        metrics = reduce_metrics(out)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if mask_updates is not None:  # e.g. frozen layers of a partly trainable stacked leaf
            updates = mask_updates(updates, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        )
        metrics.update(grad_norm=grad_norm, finite=finite.astype(jnp.float32))
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    compiled: dict[Any, Callable] = {}

    def train_step(state: TrainState, frozen: Any, batch: Any):
        key = jax.tree.structure(batch)
        if key not in compiled:
            compiled[key] = jax.jit(
                step,
                in_shardings=(state_shardings, frozen_shardings, _like(batch, batch_sharding)),
                out_shardings=(state_shardings, replicated),
                donate_argnums=(0,),
            )
        with use_mesh(mesh, rules):
            return compiled[key](state, frozen, batch)

    return train_step


def make_eval_step(
    model: Any,
    stage: Stage,
    *,
    batch_sharding: NamedSharding,
    params_shardings: Any,
    frozen_shardings: Any,
    rules: Any = None,
    combine: Combine = lambda trainable, frozen: trainable,
) -> Callable[[Any, Any, Any], LossOutput]:
    """(trainable, frozen, batch) -> the batch's LossOutput sums (add them up over batches)."""
    mesh = batch_sharding.mesh
    replicated = NamedSharding(mesh, PartitionSpec())

    def evaluate(trainable, frozen, batch):
        params = combine(trainable, frozen)
        return stage.loss(model, params, batch, jax.random.key(0), False)

    compiled: dict[Any, Callable] = {}

    def eval_step(trainable, frozen, batch):
        key = jax.tree.structure(batch)
        if key not in compiled:
            compiled[key] = jax.jit(
                evaluate,
                in_shardings=(params_shardings, frozen_shardings, _like(batch, batch_sharding)),
                out_shardings=replicated,
            )
        with use_mesh(mesh, rules):
            return compiled[key](trainable, frozen, batch)

    return eval_step


def _like(batch: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(lambda _: sharding, batch)
