"""Preference rows in the batch contract, shared by the loss tests."""

from __future__ import annotations

import numpy as np

VOCAB, T, PAIRS = 64, 14, 5


def contract_rows(seqs: list[np.ndarray], prompt_lens: list[int], t: int) -> dict[str, np.ndarray]:
    """Right-padded rows of the batch contract: targets = next token, loss_mask on completions."""
    b = len(seqs)
    out = {
        "input_ids": np.zeros((b, t), np.int32),
        "targets": np.zeros((b, t), np.int32),
        "loss_mask": np.zeros((b, t), np.float32),
        "segment_ids": np.zeros((b, t), np.int32),
        "positions": np.zeros((b, t), np.int32),
    }
    for i, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        n = len(s)
        out["input_ids"][i, :n] = s
        out["targets"][i, : n - 1] = s[1:]
        out["loss_mask"][i, p - 1 : n - 1] = 1.0
        out["segment_ids"][i, :n] = 1
        out["positions"][i, :n] = np.arange(n)
    return out


def preference_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """PAIRS pairs, shared prompts of 2-5 tokens, completions of 1-7 tokens (pad id 0)."""
    rng = np.random.default_rng(seed)
    batch = {}
    prompts = [rng.integers(1, VOCAB, rng.integers(2, 6)) for _ in range(PAIRS)]
    for side in ("chosen_", "rejected_"):
        seqs = [np.concatenate([p, rng.integers(1, VOCAB, rng.integers(1, 8))]) for p in prompts]
        rows = contract_rows(seqs, [len(p) for p in prompts], T)
        batch |= {side + k: v for k, v in rows.items()}
    return batch
