"""Tokens -> training examples: which tokens are learned, and the cut-off length.

An `Example` is one to three token sequences that travel together (one for SFT/pretraining,
chosen and rejected for a pair) with a bool mask of learned tokens each, plus per-stage extras.
Cut-off rules (data.truncation), counted by the caller:

    error     a row longer than cutoff_len is a bad row (skipped with skip_bad_rows)
    drop      such rows are dropped
    truncate  the end is cut (a pair keeps its prompt and cuts both answers; a prompt for
              rollouts keeps its end); rows left with nothing to learn are dropped
Pretraining text is never truncated: a long document is split into cut-off-sized pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxtune.data.errors import BadRow
from jaxtune.data.formats import Chat, Pair, Prompt, Record, Text, Unpaired
from jaxtune.data.masks import learned_tokens
from jaxtune.data.tokenize import Tokens


@dataclass(frozen=True)
class Example:
    """Sequences that go into one batch row together (chosen/rejected share a row index)."""

    ids: tuple[np.ndarray, ...]  # int32 [L_i] each
    learn: tuple[np.ndarray, ...]  # bool [L_i] each: token is learned as a target
    prompt_len: int = 0  # unpaired / prompt rows: tokens of the prompt
    label: int = -1  # unpaired rows: 1 desirable, 0 undesirable
    answer: str | None = None  # prompt rows: a reference answer, when the set has one

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(x) for x in self.ids)


@dataclass(frozen=True)
class MaskOptions:
    train_on_prompt: bool = False
    mask_history: bool = False


def build_examples(record: Record, tokens: list[Tokens], options: MaskOptions) -> Example:
    """Attach the learned-token masks a record's stage needs."""
    if isinstance(record, Text | Chat):
        (t,) = tokens
        learn = learned_tokens(
            len(t.ids),
            t.spans,
            train_on_prompt=options.train_on_prompt,
            mask_history=options.mask_history,
        )
        if isinstance(record, Text):
            learn[:] = True
        return Example((t.ids,), (learn,))
    if isinstance(record, Pair | Unpaired):
        learns = []
        for t in tokens:
            learn = np.zeros(len(t.ids), dtype=bool)
            learn[0 if options.train_on_prompt else t.prompt_len :] = True
            learns.append(learn)
        label = int(record.label) if isinstance(record, Unpaired) else -1
        return Example(tuple(t.ids for t in tokens), tuple(learns), tokens[0].prompt_len, label)
    if isinstance(record, Prompt):
        (t,) = tokens
        return Example((t.ids,), (np.zeros(len(t.ids), bool),), len(t.ids), answer=record.answer)
    raise BadRow(f"no examples for a {type(record).__name__}")


def split_text(example: Example, cutoff: int) -> list[Example]:
    """A pretraining document as pieces of at most `cutoff` tokens."""
    (ids,), (learn,) = example.ids, example.learn
    return [
        Example((ids[i : i + cutoff],), (learn[i : i + cutoff],))
        for i in range(0, len(ids), cutoff)
    ]


def apply_cutoff(
    example: Example, cutoff: int, truncation: str, kind: str
) -> tuple[Example | None, bool]:
    """(example or None when dropped, whether it was truncated); raises BadRow for "error"."""
    if max(example.lengths) <= cutoff:
        return example, False
    if truncation == "error":
        raise BadRow(
            f"{max(example.lengths)} tokens, longer than cutoff_len={cutoff}; raise "
            "data.cutoff_len or set data.truncation to 'truncate' or 'drop'",
            "too long",
        )
    if truncation == "drop":
        return None, False
    if kind == "prompt":
        (ids,) = example.ids
        kept = ids[-cutoff:]
        return Example((kept,), (np.zeros(cutoff, bool),), cutoff, answer=example.answer), True
    if example.prompt_len >= cutoff and kind in ("pair", "unpaired"):
        return None, False
    ids = tuple(x[:cutoff] for x in example.ids)
    learn = tuple(x[:cutoff] for x in example.learn)
    if not all(m[1:].any() for m in learn):
        return None, False
    return Example(ids, learn, example.prompt_len, example.label, example.answer), True
