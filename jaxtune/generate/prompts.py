"""Batched prompts: left padding and prompt-length buckets.

Generation takes prompts left-padded to one length P, with a mask of real tokens:

    prompt_ids   [[pad pad  a  b  c]      prompt_mask  [[0 0 1 1 1]
                  [ d   e   f  g  h]]                   [1 1 1 1 1]]

Positions come from the mask, so extra left padding changes no output. Padding P up to a
bucket (a power of two) lets prompts of different lengths share one compiled generate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxtune.errors import UserError

MIN_BUCKET = 16


def bucket_length(length: int, min_bucket: int = MIN_BUCKET) -> int:
    """The smallest power of two >= length (and >= min_bucket)."""
    bucket = min_bucket
    while bucket < length:
        bucket *= 2
    return bucket


def left_pad(
    token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [B, P] int32, mask [B, P] int32), padded on the left to P.

    P is `length` when given, else the longest list.
    """
    if not token_lists:
        raise UserError("no prompts given: pass at least one prompt")
    longest = max(len(t) for t in token_lists)
    length = longest if length is None else length
    if longest > length:
        raise UserError(f"a prompt has {longest} tokens, more than the {length} allowed")
    ids = np.full((len(token_lists), length), pad_id, np.int32)
    mask = np.zeros((len(token_lists), length), np.int32)
    for row, tokens in enumerate(token_lists):
        if len(tokens) == 0:
            raise UserError(f"prompt {row} is empty after tokenization: give it some text")
        ids[row, length - len(tokens) :] = tokens
        mask[row, length - len(tokens) :] = 1
    return ids, mask


def pad_to_length(
    prompt_ids: np.ndarray, prompt_mask: np.ndarray, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Add left padding to already left-padded prompts [B, P] so that P becomes `length`."""
    extra = length - prompt_ids.shape[1]
    if extra <= 0:
        return prompt_ids, prompt_mask
    widths = ((0, 0), (extra, 0))
    return (
        np.pad(prompt_ids, widths, constant_values=pad_id),
        np.pad(prompt_mask, widths, constant_values=0),
    )


def check_left_padded(prompt_mask: np.ndarray) -> None:
    """Each row must hold at least one token, with all padding on its left."""
    mask = np.asarray(prompt_mask).astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise UserError(f"prompt rows {empty.tolist()} have no tokens (prompt_mask all zero)")
    right_padded = np.flatnonzero((mask[:, :-1] & ~mask[:, 1:]).any(axis=1))
    if right_padded.size:
        raise UserError(
            f"prompt rows {right_padded.tolist()} are not left-padded (a masked token follows a "
            "real one): generation appends after the last column, so pad prompts on the left"
        )
