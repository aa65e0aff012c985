"""Rows with candidate responses + a judge -> preference pairs, with counts of what was skipped.

    pairs, counts = label(rows, judge)       # rows: {"prompt": str, "responses": [str, ...]}

A scorer judge ranks all candidates of a row: chosen = the best, rejected = the worst (a tie
between them skips the row). A pairwise judge compares the first two candidates; with
`both_orders` it is asked again with A and B swapped and only a consistent verdict is kept.
Counted and skipped: `unparseable` (a judge answer that says neither), `tie`, `inconsistent`,
`too_few` (fewer than two distinct candidates).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]
RESERVED = ("prompt", "responses", "chosen", "rejected")  # not copied from the input row


@dataclasses.dataclass
class Counts:
    rows: int = 0
    labelled: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        parts = [f"{n} {why}" for why, n in sorted(self.skipped.items())]
        skipped = f" (skipped: {', '.join(parts)})" if parts else ""
        return f"labelled {self.labelled} of {self.rows} rows{skipped}"


def _pair(row: Row, chosen: str, rejected: str) -> Row:
    extra = {k: v for k, v in row.items() if k not in RESERVED}
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, **extra}


def _columns(rows: Sequence[Row], n: Sequence[int]) -> dict[str, list]:
    """Per-response copies of the rows' extra fields (e.g. `answer`) for rule judges."""
    keys = set.intersection(*(set(r) for r in rows)) - set(RESERVED) if rows else set()
    return {k: [r[k] for r, m in zip(rows, n, strict=True) for _ in range(m)] for k in keys}


def label_scored(rows: Sequence[Row], judge: Any, counts: Counts) -> list[Row]:
    sizes = [len(r["responses"]) for r in rows]
    prompts = [r["prompt"] for r, m in zip(rows, sizes, strict=True) for _ in range(m)]
    responses = [x for r in rows for x in r["responses"]]
    scores = judge.scores(prompts, responses, _columns(rows, sizes)) if responses else []
    out, start = [], 0
    for row, m in zip(rows, sizes, strict=True):
        mine = scores[start : start + m]
        start += m
        if any(s is None for s in mine):
            counts.skipped["unparseable"] += 1
            continue
        best = max(range(m), key=lambda i: mine[i])
        worst = min(range(m), key=lambda i: mine[i])
        if mine[best] == mine[worst]:
            counts.skipped["tie"] += 1
            continue
        out.append(_pair(row, row["responses"][best], row["responses"][worst]))
    return out


def label_pairwise(
    rows: Sequence[Row], judge: Any, counts: Counts, *, both_orders: bool
) -> list[Row]:
    prompts = [r["prompt"] for r in rows]
    a = [r["responses"][0] for r in rows]
    b = [r["responses"][1] for r in rows]
    first = judge.choose(prompts, a, b)
    second = judge.choose(prompts, b, a) if both_orders else [None] * len(rows)
    out = []
    for row, x, y, one, two in zip(rows, a, b, first, second, strict=True):
        if one is None or (both_orders and two is None):
            counts.skipped["unparseable"] += 1
            continue
        if both_orders and one == two:  # swapped order, same letter: position bias
            counts.skipped["inconsistent"] += 1
            continue
        out.append(_pair(row, x, y) if one == "A" else _pair(row, y, x))
    return out


def label(rows: Sequence[Row], judge: Any, *, both_orders: bool = False) -> tuple[list, Counts]:
    """Preference rows {"prompt", "chosen", "rejected", ...extra fields} and the counts."""
    counts = Counts(rows=len(rows))
    usable = []
    for row in rows:
        if len(set(row["responses"])) < 2:
            counts.skipped["too_few"] += 1
        else:
            usable.append(row)
    if hasattr(judge, "choose"):
        pairs = label_pairwise(usable, judge, counts, both_orders=both_orders)
    else:
        pairs = label_scored(usable, judge, counts)
    counts.labelled = len(pairs)
    return pairs, counts
