"""optim.build over labelled trees: roles and kinds, frozen arrays (no state, bit-identical),
freeze-tuned layers, weight-decay masks, clipping, schedules vs transformers, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import optim, peft
from jaxtune.models import CausalLM, ModelConfig
from jaxtune.optim.labels import flatten

CFG = ModelConfig(
    family="llama",
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_layers=3,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


def random_params(cfg: ModelConfig, seed: int = 0):
    """Random arrays with the model's param shapes (no jit: cheaper than CausalLM.init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: jnp.asarray(rng.normal(0.0, 0.1, shape), jnp.float32),
        CausalLM(cfg).param_shapes(),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def config(**changes):
    c = optim.default_config()
    c.schedule = "constant"
    c.lr = 1e-2
    for key, value in changes.items():
        c[key] = value
    return c


def random_like(tree, seed=1):
    """Non-zero 'gradients' for every array (frozen ones too)."""
    flat, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    return treedef.unflatten(
        [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, flat, strict=True)]
    )


def run(tx, params, steps=3, grads=None):
    """`steps` updates with random gradients (or grads(i) -> tree)."""
    grads = grads or (lambda i: random_like(params, seed=i))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(steps):
        updates, state = update(grads(i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def by_path(tree):
    return {path: leaf for path, leaf in flatten(tree)[0] if leaf is not None}


def test_roles_and_kinds(params):
    lora = peft.lora(params, ["q_proj"], rank=2, alpha=4, rng=jax.random.PRNGKey(0))
    infos, _ = optim.describe(lora)
    seen = {i.path: (i.role, i.kind) for i in infos if i is not None}
    assert seen["embed_tokens/embedding"] == ("frozen", "embedding")
    assert seen["layers/input_layernorm/scale"] == ("frozen", "no_decay")
    assert seen["layers/self_attn/q_proj/kernel/base"] == ("frozen", "dense2d")
    assert seen["layers/self_attn/q_proj/kernel/lora_a"] == ("lora_a", "dense2d")
    assert seen["layers/self_attn/q_proj/kernel/lora_b"] == ("lora_b", "dense2d")
    assert seen["lm_head/kernel"] == ("frozen", "dense2d")
    full, _ = optim.describe(params)
    assert {i.role for i in full} == {"trainable"}
    assert {i.path: i.kind for i in full}["norm/scale"] == "no_decay"


def test_frozen_leaves_hold_no_state_and_stay_bit_identical(params):
    """Hand-made labels: frozen arrays get non-zero gradients and weight decay is on, yet they
    do not move and the state holds Adam moments for the trainable arrays only."""
    frozen_paths = {"embed_tokens/embedding", "layers/mlp/up_proj/kernel", "norm/scale"}
    labels = jax.tree_util.tree_map_with_path(
        lambda kp, _: "frozen" if optim.labels.path_str(kp) in frozen_paths else "trainable",
        params,
    )
    tx = optim.build(config(weight_decay=0.1), params, labels=labels)
    new, state = run(tx, params)
    before, after = by_path(params), by_path(new)
    for path in before:
        same = np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
        assert same == (path in frozen_paths), path
    trainable_bytes = sum(x.nbytes for p, x in before.items() if p not in frozen_paths)
    arrays = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert sum(x.nbytes for x in arrays) == 2 * trainable_bytes  # mu and nu, nothing else
    frozen_shapes = {before[p].shape for p in frozen_paths} - {
        x.shape for p, x in before.items() if p not in frozen_paths
    }
    assert not frozen_shapes & {x.shape for x in arrays}


def test_real_lora_params_full_tree_and_split(params):
    """peft.lora params: the whole tree (labels derived) and the train loop's call on the
    trainable split give the same updates; the base never moves."""
    lora = peft.lora(params, ["q_proj", "down_proj"], rank=2, alpha=4, rng=jax.random.PRNGKey(0))
    c = config(loraplus_ratio=16.0)
    new, state = run(optim.build(c, lora), lora)
    before, after = by_path(lora), by_path(new)
    labels = by_path(peft.param_labels(lora))
    for path in before:
        moved = not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
        assert moved == (labels[path] in ("lora_a", "lora_b")), path
    adapter_bytes = sum(x.nbytes for p, x in before.items() if labels[p] != "frozen")
    assert sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0) == 2 * adapter_bytes

    trainable, rest = peft.split_trainable(lora)
    split_labels, _ = peft.split_trainable(peft.param_labels(lora))
    tx = optim.build(c, trainable, labels=split_labels, total_steps=10)
    mask = peft.trainable_mask(lora)
    split_grads = lambda i: jax.tree.map(
        lambda g, m: g if m else None, random_like(lora, seed=i), mask
    )
    new_split, _ = run(tx, trainable, grads=split_grads)
    merged = by_path(peft.combine(new_split, rest))
    for path, x in after.items():
        if labels[path] != "frozen":
            np.testing.assert_array_equal(np.asarray(merged[path]), np.asarray(x), err_msg=path)


def test_freeze_keeps_state_for_trained_layers_only(params):
    frozen_tree = peft.freeze(params, trainable_layers=1)
    trainable, _ = peft.split_trainable(frozen_tree)
    tx = optim.build(config(weight_decay=0.1), trainable)
    new, state = run(tx, trainable)
    kernel = "layers/mlp/down_proj/kernel"
    before, after = by_path(trainable)[kernel], by_path(new)[kernel]
    np.testing.assert_array_equal(np.asarray(before[:2]), np.asarray(after[:2]))
    assert not np.array_equal(np.asarray(before[2]), np.asarray(after[2]))
    layer_bytes = sum(x.nbytes // x.shape[0] for x in by_path(trainable).values())
    assert sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0) == 2 * layer_bytes


def test_no_weight_decay_on_norms_biases_and_dora_magnitudes(params):
    dora = peft.dora(params, ["v_proj"], rank=2, alpha=4, rng=jax.random.PRNGKey(0))
    c = config(weight_decay=0.5)
    tx = optim.build(c, dora)
    zero = jax.tree.map(jnp.zeros_like, dora)
    updates, _ = jax.jit(tx.update)(zero, tx.init(dora), dora)
    moved = {p: bool(jnp.any(u != 0)) for p, u in by_path(updates).items()}
    assert moved["layers/self_attn/v_proj/kernel/lora_a"]  # decayed toward 0
    assert not moved["layers/self_attn/v_proj/kernel/magnitude"]
    assert not moved["layers/self_attn/v_proj/kernel/base"]  # frozen
    full = optim.build(c, params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(full.update)(zero, full.init(params), params)
    moved = {p: bool(jnp.any(u != 0)) for p, u in by_path(updates).items()}
    assert moved["layers/mlp/up_proj/kernel"] and moved["embed_tokens/embedding"]
    assert not moved["layers/input_layernorm/scale"] and not moved["norm/scale"]


def test_clipping_counts_trainable_gradients_only(params):
    labels = jax.tree.map(lambda _: "trainable", params)
    labels["embed_tokens"]["embedding"] = "frozen"
    c = config(name="sgd", lr=1.0, max_grad_norm=1.0)
    tx = optim.build(c, params, labels=labels)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
    grads["embed_tokens"]["embedding"] = jnp.full_like(grads["embed_tokens"]["embedding"], 1e3)
    update = jax.jit(tx.update)
    updates, _ = update(grads, tx.init(params), params)
    expected = jax.tree.map(lambda g: -g, grads)  # trainable norm < 1: no clipping
    expected["embed_tokens"]["embedding"] = jnp.zeros_like(grads["embed_tokens"]["embedding"])
    for path, u in by_path(updates).items():
        np.testing.assert_allclose(np.asarray(u), np.asarray(by_path(expected)[path]), rtol=1e-6)
    big = jax.tree.map(lambda g: g * 1e4, grads)
    updates, _ = update(big, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedules_match_transformers(kind):
    import torch
    from transformers import get_scheduler

    total, warmup, lr = 50, 7, 3e-4
    c = config(schedule=kind, lr=lr, warmup_steps=warmup)
    ours = optim.schedule(c, total_steps=total)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    name = {"constant": "constant_with_warmup"}.get(kind, kind)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total):
        assert float(ours(step)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-5, abs=1e-12)
        opt.step()
        sched.step()
    ratio = optim.schedule(config(lr=lr, warmup_ratio=0.1), total_steps=total)
    assert float(ratio(5)) == pytest.approx(lr * 5 / 5) and float(ratio(4)) < lr


def test_mixed_precision_modes(params):
    assert optim.model_dtypes("bf16") == (jnp.float32, jnp.bfloat16)
    assert optim.model_dtypes("pure_bf16") == (jnp.bfloat16, jnp.bfloat16)
    small = {"layers": params["layers"]["mlp"]}
    for mode, param_dtype, state_dtype in [
        ("bf16", jnp.float32, jnp.float32),
        ("none", jnp.bfloat16, jnp.float32),  # bf16 params loaded as such: fp32 moments
        ("pure_bf16", jnp.bfloat16, jnp.bfloat16),
    ]:
        p = jax.tree.map(lambda x, d=param_dtype: x.astype(d), small)
        tx = optim.build(config(mixed_precision=mode), p)
        new, state = run(tx, p, steps=2)
        assert {x.dtype for x in jax.tree.leaves(new)} == {jnp.dtype(param_dtype)}
        moments = [x for x in jax.tree.leaves(state) if x.ndim]
        assert moments and {x.dtype for x in moments} == {jnp.dtype(state_dtype)}


def test_train_config_takes_the_optim_section():
    from jaxtune.train.config import default_config

    c = default_config().optim
    for key in ("name", "lr", "loraplus_ratio", "max_grad_norm", "mixed_precision"):
        assert key in c
    assert c.galore.rank > 0 and c.badam.switch_every > 0


def test_errors_name_the_key_and_the_choices(params):
    with pytest.raises(optim.OptimError, match=r"optim.name='adam'.*adamw, sgd, adafactor"):
        optim.build(config(name="adam"), params)
    with pytest.raises(optim.OptimError, match="schedule"):
        optim.build(config(schedule="step"), params)
    bad = jax.tree.map(lambda _: "trainable", params)
    bad["norm"]["scale"] = "lora_c"
    with pytest.raises(optim.OptimError, match=r"unknown label 'lora_c' at norm/scale.*lora_b"):
        optim.build(config(), params, labels=bad)
    lora = peft.lora(params, ["q_proj"], rank=2, alpha=4, rng=jax.random.PRNGKey(0))
    with pytest.raises(optim.OptimError, match="selects no trainable 2-D weight"):
        optim.build(config(name="galore"), lora)
    g = config(name="galore")
    g.galore.targets = "norm"
    with pytest.raises(optim.OptimError, match=r"galore\.targets"):
        optim.build(g, params)
    with pytest.raises(optim.OptimError, match="badam"):
        optim.build(config(name="badam"), lora)
    with pytest.raises(optim.OptimError, match="total_steps"):
        optim.build(config(schedule="cosine"), params)
