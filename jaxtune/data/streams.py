"""Deterministic streams of examples: positions in, (position, example) out.

A stream's `iterate(position)` yields `(position_of_this_example, example)` from `position` on.
Positions are JSON values, so "where the next batch starts" is a checkpointable state:

    IndexedSource   prepared examples; epoch e visits them in the permutation drawn from
                    (seed, e); position = how many were drawn (the stream never ends for
                    training; eval makes one pass in file order)
    StreamedSource  a streaming dataset read lazily; position = [epoch, row, index in row]
    Mixture         sources drawn with weights; the draw for example n comes from (seed, n's
                    block), so it is the same after a restore; position = {"n", "sources"}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxtune.data.errors import DataError
from jaxtune.data.examples import Example

Position = Any
BLOCK = 4096


class IndexedSource:
    """Prepared examples in seeded per-epoch order."""

    def __init__(
        self, examples: Sequence[Example], seed: int, shuffle: bool, repeat: bool, salt: int = 0
    ):
        self.examples = examples
        self.seed, self.shuffle, self.repeat, self.salt = seed, shuffle, repeat, salt
        self._orders: dict[int, np.ndarray] = {}

    def start(self) -> Position:
        return 0

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            n = len(self.examples)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.salt, epoch])
                self._orders = {epoch: rng.permutation(n)}
            else:
                self._orders = {epoch: np.arange(n)}
        return self._orders[epoch]

    def iterate(self, position: Position) -> Iterator[tuple[Position, Example]]:
        n, size = int(position), len(self.examples)
        while self.repeat or n < size:
            epoch, i = divmod(n, size)
            yield n, self.examples[int(self.order(epoch)[i])]
            n += 1


class StreamedSource:
    """A streaming dataset, reshuffled each epoch (datasets' shuffle buffer + set_epoch)."""

    def __init__(
        self,
        open_epoch: Callable[[int, int], Iterator[tuple[int, list[Example]]]],
        repeat: bool,
        name: str,
    ):
        self.open_epoch = open_epoch  # (epoch, first row) -> (row, examples of that row) ...
        self.repeat, self.name = repeat, name

    def start(self) -> Position:
        return [0, 0, 0]

    def iterate(self, position: Position) -> Iterator[tuple[Position, Example]]:
        epoch, row, j = (int(x) for x in position)
        while True:
            produced = False
            for r, examples in self.open_epoch(epoch, row):
                for k in range(j if r == row else 0, len(examples)):
                    produced = True
                    yield [epoch, r, k], examples[k]
            if not self.repeat:
                return
            if not produced and row == 0:
                raise DataError(f"{self.name}: a whole pass gave no usable examples")
            epoch, row, j = epoch + 1, 0, 0


class Mixture:
    """Sources drawn with fixed weights, reproducibly from the seed."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float], seed: int):
        w = np.asarray(weights, np.float64)
        self.sources, self.p, self.seed = list(sources), w / w.sum(), seed

    def start(self) -> Position:
        return {"n": 0, "sources": [s.start() for s in self.sources]}

    def draws(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7919, block])
        return rng.choice(len(self.sources), size=BLOCK, p=self.p)

    def iterate(self, position: Position) -> Iterator[tuple[Position, Example]]:
        n = int(position["n"])
        iters = [s.iterate(p) for s, p in zip(self.sources, position["sources"], strict=True)]
        peeked: list[tuple[Position, Example] | None] = [None] * len(iters)

        def peek(s: int) -> tuple[Position, Example]:
            if peeked[s] is None:
                peeked[s] = next(iters[s])
            return peeked[s]

        current = list(position["sources"])
        draws, block = self.draws(n // BLOCK), n // BLOCK
        while True:
            if n // BLOCK != block:
                block = n // BLOCK
                draws = self.draws(block)
            s = int(draws[n % BLOCK])
            pos, example = peek(s)
            current[s] = pos
            yield {"n": n, "sources": list(current)}, example
            peeked[s] = None
            n += 1
            current[s] = peek(s)[0]
