"""Packed rows through a real model: each document's logits equal running it alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.data import make_lm_batches, set_path
from jaxtune.models import load
from tests.test_data_tokenizers import sentencepiece_like


@pytest.mark.parametrize("family", ["llama", "mistral"])  # mistral: sliding window of 5
def test_packed_logits_equal_each_document_alone(tiny_checkpoint, family):
    model, params = load(tiny_checkpoint(family))
    tok = sentencepiece_like(128)  # fits the tiny models' vocabulary of 128
    assert len(tok) <= model.config.vocab_size
    config = {"train": set_path("demo_pirate"), "template": "mistral", "packing": True, "seed": 0}
    batch = next(
        make_lm_batches(config, tok, batch_size=2, seq_len=256, host_index=0, host_count=1)
    )
    seg = batch["segment_ids"]
    assert (seg.max(axis=1) >= 2).all()  # every row really holds several documents
    apply = jax.jit(model.apply)
    packed = apply(
        params,
        jnp.asarray(batch["input_ids"]),
        positions=jnp.asarray(batch["positions"]),
        segment_ids=jnp.asarray(seg),
        attention_mask=jnp.asarray(seg > 0),
    )
    packed = np.asarray(packed)
    # each document alone in its own row (right padding does not reach earlier positions)
    docs = [(r, seg[r] == s) for r in range(seg.shape[0]) for s in range(1, seg[r].max() + 1)]
    alone_ids = np.zeros((len(docs), seg.shape[1]), np.int32)
    for i, (r, sel) in enumerate(docs):
        alone_ids[i, : sel.sum()] = batch["input_ids"][r][sel]
    lengths = np.array([sel.sum() for _, sel in docs])
    valid = np.arange(seg.shape[1])[None] < lengths[:, None]
    alone = np.asarray(apply(params, jnp.asarray(alone_ids), attention_mask=jnp.asarray(valid)))
    assert len(docs) >= 4
    packed_loss = separate = 0.0
    for i, (r, sel) in enumerate(docs):
        n = lengths[i]
        np.testing.assert_allclose(packed[r][sel], alone[i, :n], atol=1e-4, rtol=0)
        tgt, mask = batch["targets"][r][sel], batch["loss_mask"][r][sel]
        for logits, total in ((packed[r][sel], "packed"), (alone[i, :n], "alone")):
            logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
            nll = float((-logp[np.arange(n), tgt] * mask).sum())
            if total == "packed":
                packed_loss += nll
            else:
                separate += nll
    # the loss of the packed rows is the sum of the documents' own losses
    assert batch["loss_mask"].sum() == sum(batch["loss_mask"][r][sel].sum() for r, sel in docs)
    np.testing.assert_allclose(packed_loss, separate, rtol=1e-5)
