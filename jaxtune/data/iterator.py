"""`BatchIterator`: batches from a stream of examples, with a checkpointable state.

    it = make_lm_batches(config, tokenizer, batch_size=8, seq_len=512)
    batch = next(it)              # dict of numpy arrays (see jaxtune.data.batches)
    state = it.state()            # JSON-serializable; store it with the checkpoint
    it2 = make_lm_batches(...)    # same arguments
    it2.restore(state)            # continues with exactly the batches `it` would give next

A batch depends only on the stream position where it starts (see packing), so the state is that
position plus a fingerprint of the settings that shape batches. On several hosts, every host
walks the same global stream (map-style data) and materializes only its own rows, so the state is
the same on every host; streaming sources are split by host instead, and each host's state is its
own (save one per process).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxtune.data.errors import DataError
from jaxtune.data.examples import Example
from jaxtune.data.packing import RowPacker
from jaxtune.data.streams import Position

Assemble = Callable[[Sequence[Sequence[Example]], int, int], dict[str, np.ndarray]]


class BatchIterator:
    """Fixed-shape numpy batches for one stage; `state()` / `restore(state)` for checkpoints."""

    def __init__(
        self,
        stream: Any,
        assemble: Assemble,
        *,
        rows: int,
        seq_len: int,
        packing: bool,
        host_rows: slice,
        pad_id: int = 0,
        fingerprint: dict[str, Any] | None = None,
    ):
        self.stream, self.assemble = stream, assemble
        self.rows, self.seq_len, self.packing = rows, seq_len, packing
        self.host_rows, self.pad_id = host_rows, pad_id
        self.fingerprint = dict(fingerprint or {})
        self.stats = {"batches": 0, "tokens": 0, "slots": 0}
        self._open(stream.start())

    def _open(self, position: Position) -> None:
        self._position = copy.deepcopy(position)
        self._examples: Iterator[tuple[Position, Example]] | None = self.stream.iterate(position)
        self._peek: tuple[Position, Example] | None = None

    def _next_example(self) -> tuple[Position, Example] | None:
        if self._peek is None and self._examples is not None:
            self._peek = next(self._examples, None)
            if self._peek is None:
                self._examples = None
        return self._peek

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        packer = RowPacker(self.rows, self.seq_len, self.packing)
        while (item := self._next_example()) is not None:
            if not packer.add(item[1]):
                break
            self._peek = None
        if packer.empty and self._peek is not None:
            lengths = self._peek[1].lengths
            raise DataError(
                f"an example of {max(lengths)} tokens does not fit a row of {self.seq_len}"
            )
        if packer.empty:
            raise StopIteration
        self._position = self._peek[0] if self._peek is not None else None
        self.stats["batches"] += 1
        self.stats["tokens"] += packer.tokens()
        self.stats["slots"] += self.rows * self.seq_len
        return self.assemble(packer.rows[self.host_rows], self.seq_len, self.pad_id)

    def state(self) -> dict[str, Any]:
        """Where the next batch starts, as JSON-serializable data."""
        position = self._position
        if self._peek is not None:
            position = self._peek[0]
        return json.loads(json.dumps({"position": position, "fingerprint": self.fingerprint}))

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a state() taken on an iterator built with the same settings."""
        saved = state.get("fingerprint", {})
        if saved != json.loads(json.dumps(self.fingerprint)):
            diff = {
                k: (saved.get(k), self.fingerprint.get(k))
                for k in set(saved) | set(self.fingerprint)
                if saved.get(k) != self.fingerprint.get(k)
            }
            raise DataError(
                f"the saved data state was made with other data settings (saved, now): {diff}"
            )
        if state["position"] is None:
            self._examples, self._peek, self._position = None, None, None
            return
        self._open(state["position"])

    @property
    def fill(self) -> float:
        """Fraction of row slots holding real tokens so far (packing efficiency)."""
        return self.stats["tokens"] / max(1, self.stats["slots"])
