"""LoRA+: the learning rate of B (and of DoRA magnitudes) is `loraplus_ratio` x that of A, seen
in the updates themselves (SGD: update = -lr g; Adam's first step: |update| = lr); the embedding
learning rates (LoRA+'s for an adapted embedding, `embedding_lr` for a trained table)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune import optim, peft
from jaxtune.models import CausalLM, ModelConfig

LR = 0.1
CFG = ModelConfig(
    family="llama",
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
)


def random_params(cfg: ModelConfig, seed: int = 0):
    """Random arrays with the model's param shapes (no jit: cheaper than CausalLM.init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: jnp.asarray(rng.normal(0.0, 0.1, shape), jnp.float32),
        CausalLM(cfg).param_shapes(),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def config(name, **changes):
    c = optim.default_config()
    c.update(name=name, lr=LR, schedule="constant", max_grad_norm=0.0, **changes)
    return c


def first_update(c, params, labels=None, seed=0):
    tx = optim.build(c, params, labels=labels)
    flat, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    grads = treedef.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, flat, strict=True)]
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return grads, updates


@pytest.fixture(scope="module")
def adapted():
    params = random_params(CFG)
    lora = peft.lora(params, ["q_proj", "v_proj"], rank=4, alpha=8, rng=jax.random.PRNGKey(1))
    dora = peft.dora(params, ["up_proj"], rank=4, alpha=8, rng=jax.random.PRNGKey(2))
    return lora, dora


@pytest.mark.parametrize("ratio", [16.0, 4.0])
def test_sgd_update_ratio_is_loraplus_ratio(adapted, ratio):
    lora, _ = adapted
    trainable, _ = peft.split_trainable(lora)
    grads, updates = first_update(config("sgd", loraplus_ratio=ratio), trainable)
    for module in ("q_proj", "v_proj"):
        g, u = grads["layers"]["self_attn"][module]["kernel"], updates["layers"]["self_attn"]
        u = u[module]["kernel"]
        np.testing.assert_allclose(u.lora_a, -LR * g.lora_a, rtol=1e-6)
        np.testing.assert_allclose(u.lora_b, -LR * ratio * g.lora_b, rtol=1e-6)


def test_adam_first_step_ratio_and_dora_magnitude(adapted):
    """Adam's first step moves every coordinate by lr * g / (|g| + eps) ~ lr: B by 16 lr."""
    lora, dora = adapted
    _, updates = first_update(config("adamw", loraplus_ratio=16.0), peft.split_trainable(lora)[0])
    q = updates["layers"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(jnp.abs(q.lora_a), LR, rtol=1e-5)
    np.testing.assert_allclose(jnp.abs(q.lora_b), 16 * LR, rtol=1e-5)
    _, updates = first_update(config("adamw", loraplus_ratio=16.0), peft.split_trainable(dora)[0])
    up = updates["layers"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_allclose(jnp.abs(up.magnitude), 16 * LR, rtol=1e-5)  # LlamaFactory's rule
    np.testing.assert_allclose(jnp.abs(up.lora_a), LR, rtol=1e-5)
    _, plain = first_update(config("adamw"), peft.split_trainable(lora)[0])
    q = plain["layers"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(jnp.abs(q.lora_b), LR, rtol=1e-5)  # ratio 0: LoRA+ off


def test_embedding_learning_rates():
    params = {
        "embed_tokens": {"embedding": {"lora_a": jnp.ones((8, 2)), "lora_b": jnp.ones((2, 4))}},
        "embed_positions": {"embedding": jnp.ones((6, 4))},
        "layers": {"mlp": {"kernel": jnp.ones((2, 4, 4))}},
    }
    labels = {
        "embed_tokens": {"embedding": {"lora_a": "lora_a", "lora_b": "lora_b"}},
        "embed_positions": {"embedding": "trainable"},
        "layers": {"mlp": {"kernel": "trainable"}},
    }
    c = config("sgd", loraplus_ratio=16.0, loraplus_lr_embedding=1e-6, embedding_lr=1e-3)
    grads, updates = first_update(c, params, labels)
    lr_of = lambda u, g: float(-jnp.mean(u / g))
    emb = updates["embed_tokens"]["embedding"], grads["embed_tokens"]["embedding"]
    assert lr_of(emb[0]["lora_b"], emb[1]["lora_b"]) == pytest.approx(1e-6, rel=1e-5)
    assert lr_of(emb[0]["lora_a"], emb[1]["lora_a"]) == pytest.approx(LR, rel=1e-5)
    pos = updates["embed_positions"]["embedding"], grads["embed_positions"]["embedding"]
    assert lr_of(*pos) == pytest.approx(1e-3, rel=1e-5)
    mlp = updates["layers"]["mlp"]["kernel"], grads["layers"]["mlp"]["kernel"]
    assert lr_of(*mlp) == pytest.approx(LR, rel=1e-5)
    assert optim.plan(c, params, labels) == {
        "embed_positions/embedding": "sgd:lr*0.01",
        "embed_tokens/embedding/lora_a": "sgd",
        "embed_tokens/embedding/lora_b": "sgd:lr*1e-05",
        "layers/mlp/kernel": "sgd",
    }
