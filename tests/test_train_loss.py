"""The SFT/pretraining loss: transformers parity, masking, chunking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune import models
from jaxtune.data import make_batches, set_path
from jaxtune.losses import chunked_lm_loss, lm_loss
from jaxtune.train.stages.sft import LMStage
from tests.train_support import small_tokenizer


@pytest.fixture(scope="module")
def sft_batch():
    data = {"train": set_path("instruct"), "truncation": "truncate", "shuffle": False}
    batches = make_batches(data, small_tokenizer(), stage="sft", batch_size=4, seq_len=96)
    batch = next(batches)
    assert batch["loss_mask"].sum() > 0 and (batch["loss_mask"] == 0).any()  # prompts masked
    return batch


def hf_labels(batch) -> np.ndarray:
    """transformers' labels for the same tokens: -100 except where our loss counts."""
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    counted = batch["loss_mask"][:, :-1] > 0
    labels[:, 1:] = np.where(counted, batch["targets"][:, :-1], -100)
    return labels


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_sft_loss_equals_transformers(tiny_checkpoint, sft_batch, name):
    import torch
    from transformers import AutoModelForCausalLM

    directory = tiny_checkpoint(name)
    model, params = models.load(directory)
    stage = LMStage()
    out = stage.loss(model, params, jax.tree.map(jnp.asarray, sft_batch), jax.random.key(0), False)
    ours = float(out.total / out.weight)

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor(sft_batch["input_ids"], dtype=torch.long)
    mask = torch.tensor(sft_batch["segment_ids"] > 0, dtype=torch.long)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, labels=torch.tensor(hf_labels(sft_batch))).loss
    assert int(out.weight) == int((hf_labels(sft_batch) != -100).sum())
    np.testing.assert_allclose(ours, float(theirs), rtol=0, atol=1e-5)


def test_masked_positions_do_not_count():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
    mask = jnp.asarray([[1, 1, 0, 0, 1], [0, 1, 1, 1, 0]], jnp.float32)
    total, count = lm_loss(logits, targets, mask)
    junk = targets.at[0, 2].set(10_000)  # an out-of-range id where the mask is 0
    total2, _ = lm_loss(logits, junk, mask)
    logp = jax.nn.log_softmax(logits)
    expected = -sum(
        float(logp[b, t, targets[b, t]]) for b in range(2) for t in range(5) if mask[b, t]
    )
    assert float(count) == 6
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    np.testing.assert_allclose(float(total2), float(total), rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_loss_equals_full_loss_and_gradient(chunk):
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(3, 9, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 50)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 9)), jnp.int32)
    mask = jnp.asarray(rng.random((3, 9)) > 0.3, jnp.float32)

    def full(h, w):
        return lm_loss(h @ w, targets, mask)[0]

    def chunked(h, w):
        return chunked_lm_loss(h, lambda x: x @ w, targets, mask, chunk)[0]

    np.testing.assert_allclose(float(chunked(hidden, head)), float(full(hidden, head)), rtol=1e-6)
    g_full = jax.grad(full, argnums=(0, 1))(hidden, head)
    g_chunk = jax.grad(chunked, argnums=(0, 1))(hidden, head)
    for a, b in zip(g_full, g_chunk, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
