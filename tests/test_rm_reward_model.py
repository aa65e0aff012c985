"""`load_reward_model` + `score` on transformers' own sequence classifiers (num_labels=1)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.errors import CheckpointError
from jaxtune.models import load_reward_model, score
from jaxtune.models.reward_model import is_reward_checkpoint
from tests.tiny_models import SMALL

IDS = np.random.default_rng(0).integers(3, 128, (3, 9))
MASK = np.array([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])


def hf_classifier(directory, family: str, **extra):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        family, **dict(SMALL, num_labels=1, pad_token_id=0, initializer_range=0.2, **extra)
    )
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("family, extra", [("llama", {}), ("qwen2", {"tie_word_embeddings": True})])
def test_scores_equal_transformers(tmp_path, family, extra):
    import torch

    hf = hf_classifier(tmp_path, family, **extra)
    ids = np.where(MASK > 0, IDS, 0)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids), attention_mask=torch.tensor(MASK)).logits[:, 0].numpy()
    assert is_reward_checkpoint(tmp_path)
    model, params, head = load_reward_model(tmp_path)
    assert head["kernel"].shape == (SMALL["hidden_size"], 1)
    np.testing.assert_allclose(score(model, params, head, ids, MASK), theirs, rtol=0, atol=1e-4)
    # Left padding: positions count the tokens, so each row scores as its right-padded twin.
    left = np.stack([np.roll(r, int((m == 0).sum())) for r, m in zip(ids, MASK, strict=True)])
    left_mask = np.stack([np.roll(m, int((m == 0).sum())) for m in MASK])
    ours_left = score(model, params, head, left, left_mask)
    np.testing.assert_allclose(ours_left, theirs, rtol=0, atol=1e-4)


def test_a_causal_lm_is_not_a_reward_model(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    assert not is_reward_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"no 'score\.weight' tensor"):
        load_reward_model(path)
