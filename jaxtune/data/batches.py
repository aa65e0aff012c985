"""Rows of examples -> the numpy batch dicts of the batch contract.

Language-model batch, all [B, T]:
    input_ids   int32    tokens, documents packed left to right, then padding
    targets     int32    the next token within the document (0 where not learned)
    loss_mask   float32  1.0 where predicting targets[t] at position t counts in the loss
    segment_ids int32    0 = padding, 1, 2, ... = the documents of the row
    positions   int32    restarting at 0 for each document
Preference batches: the same keys prefixed `chosen_` and `rejected_` (same T; segment s of a
chosen row and segment s of the rejected row are the same pair). KTO batches: one sequence plus
`kto_label` [B] (1 desirable, 0 undesirable) and the `kl_` sequence (row i's prompt with the
completion of row i-1, as TRL builds the KL term). Prompt batches: `prompt_ids` [B, P]
left-padded and `prompt_mask` [B, P] (int32), and `answer` [B] (str) when the set has answers.
Rows whose segment_ids are all 0 are padding (only in the last batch of a finite eval pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxtune.data.examples import Example
from jaxtune.data.masks import shift_targets

LM_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


def empty_rows(rows: int, seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.full((rows, seq_len), pad_id, np.int32),
        "targets": np.zeros((rows, seq_len), np.int32),
        "loss_mask": np.zeros((rows, seq_len), np.float32),
        "segment_ids": np.zeros((rows, seq_len), np.int32),
        "positions": np.zeros((rows, seq_len), np.int32),
    }


def fill_row(
    batch: dict[str, np.ndarray], r: int, docs: Sequence[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write (ids, learn) documents into row r, one segment each."""
    offset = 0
    for s, (ids, learn) in enumerate(docs, start=1):
        n = len(ids)
        targets, loss_mask = shift_targets(ids, learn)
        sl = slice(offset, offset + n)
        batch["input_ids"][r, sl] = ids
        batch["targets"][r, sl] = targets
        batch["loss_mask"][r, sl] = loss_mask
        batch["segment_ids"][r, sl] = s
        batch["positions"][r, sl] = np.arange(n, dtype=np.int32)
        offset += n


def lm_batch(
    rows: Sequence[Sequence[Example]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    batch = empty_rows(len(rows), seq_len, pad_id)
    for r, examples in enumerate(rows):
        fill_row(batch, r, [(e.ids[0], e.learn[0]) for e in examples])
    return batch


def pair_batch(
    rows: Sequence[Sequence[Example]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    out = {}
    for i, side in enumerate(("chosen", "rejected")):
        batch = empty_rows(len(rows), seq_len, pad_id)
        for r, examples in enumerate(rows):
            fill_row(batch, r, [(e.ids[i], e.learn[i]) for e in examples])
        out.update({f"{side}_{k}": v for k, v in batch.items()})
    return out


def kto_batch(
    rows: Sequence[Sequence[Example]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One example per row; the KL sequence pairs row i's prompt with row i-1's completion."""
    batch = lm_batch(rows, seq_len, pad_id)
    real = [r for r, examples in enumerate(rows) if examples]
    kl = empty_rows(len(rows), seq_len, pad_id)
    labels = np.zeros(len(rows), np.int32)
    for j, r in enumerate(real):
        (example,) = rows[r]
        labels[r] = example.label
        (other,) = rows[real[j - 1]]
        prompt = example.ids[0][: example.prompt_len]
        completion = other.ids[0][other.prompt_len :]
        ids = np.concatenate([prompt, completion])[:seq_len]
        learn = np.arange(len(ids)) >= example.prompt_len
        fill_row(kl, r, [(ids, learn)])
    batch["kto_label"] = labels
    batch.update({f"kl_{k}": v for k, v in kl.items()})
    return batch


def prompt_batch(
    rows: Sequence[Sequence[Example]], prompt_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Left-padded prompts [B, P] for rollouts."""
    ids = np.full((len(rows), prompt_len), pad_id, np.int32)
    mask = np.zeros((len(rows), prompt_len), np.int32)
    answers = []
    for r, examples in enumerate(rows):
        answers.append(examples[0].answer or "" if examples else "")
        if examples:
            prompt = examples[0].ids[0]
            ids[r, prompt_len - len(prompt) :] = prompt
            mask[r, prompt_len - len(prompt) :] = 1
    batch = {"prompt_ids": ids, "prompt_mask": mask}
    if any(answers):
        batch["answer"] = np.asarray(answers, dtype=object)
    return batch


ASSEMBLERS = {"lm": lm_batch, "pair": pair_batch, "unpaired": kto_batch, "prompt": prompt_batch}
