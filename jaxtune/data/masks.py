"""Which tokens are learned, and the shift from learned tokens to next-token targets.

A conversation is tokenized once; `spans` are the token ranges [start, end) of its assistant
turns, each ending with the turn's end-of-turn/EOS token, which is therefore learned.

    tokens   <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n Hello <|im_end|> \\n
    learn     0 ...                                                  1     1         1
    targets  = ids shifted left;  loss_mask[t] = learn[t + 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Span = tuple[int, int]


def learned_tokens(
    length: int,
    spans: Sequence[Span],
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> np.ndarray:
    """bool [length]: True for tokens the model learns to predict.

    Default: every assistant span. mask_history: only the last span. train_on_prompt: all tokens
    (with mask_history: the prompt of the last turn and the last answer, history excluded).
    """
    learn = np.zeros(length, dtype=bool)
    chosen = list(spans[-1:]) if mask_history else list(spans)
    if train_on_prompt:
        start = (spans[-2][1] if mask_history and len(spans) > 1 else 0) if spans else 0
        learn[start:] = True
        return learn
    for start, end in chosen:
        learn[start:end] = True
    return learn


def shift_targets(ids: np.ndarray, learn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, loss_mask) for one document: targets[t] = ids[t+1], counted if learn[t+1]."""
    targets = np.zeros_like(ids)
    loss_mask = np.zeros(ids.shape, dtype=np.float32)
    targets[:-1] = ids[1:]
    loss_mask[:-1] = learn[1:]
    return targets, loss_mask
