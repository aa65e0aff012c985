"""Forward parity with transformers (PyTorch, CPU, fp32) for every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import jaxtune.models as jm

TOL = 1e-4  # fp32 logits, max |diff|, fixed


def hf_logits(directory, ids, mask=None, positions=None):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    kwargs = {}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(mask)
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions)
    with torch.no_grad():
        return model(torch.tensor(ids), **kwargs).logits.numpy()


def test_logits_match_transformers(tiny_checkpoint, family_name):
    directory = tiny_checkpoint(family_name)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, size=(2, 12))
    model, params = jm.load(directory)
    ours = np.asarray(model.apply(params, ids))
    ref = hf_logits(directory, ids)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(tiny_checkpoint, family_name, side):
    directory = tiny_checkpoint(family_name)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 128, size=(3, 10))
    lengths = [10, 7, 4]
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, 10 - n :] = 1
        else:
            mask[row, :n] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    model, params = jm.load(directory)
    ours = np.asarray(model.apply(params, ids, attention_mask=mask))
    ref = hf_logits(directory, ids, mask, positions)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)
