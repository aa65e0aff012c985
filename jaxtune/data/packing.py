"""First-fit packing of examples into the fixed rows of one batch.

Examples arrive in stream order; each goes into the first of the batch's rows with room for all
of its sequences (a pair needs room in the chosen and the rejected row of the same index, so the
two stay together and share segment numbers). The first example that fits nowhere closes the
batch and opens the next one, so a batch depends only on where it starts in the stream: that
start is the whole iterator state. Without packing every row holds one example.
"""

from __future__ import annotations

from jaxtune.data.examples import Example


class RowPacker:
    """The rows of one batch being filled."""

    def __init__(self, rows: int, seq_len: int, packing: bool):
        self.seq_len = seq_len
        self.packing = packing
        self.rows: list[list[Example]] = [[] for _ in range(rows)]
        self.used: list[tuple[int, ...] | None] = [None] * rows

    def add(self, example: Example) -> bool:
        """Place the example in the first row with room; False when none has room."""
        lengths = example.lengths
        for r, used in enumerate(self.used):
            if used is None:
                fits = max(lengths) <= self.seq_len
            else:
                fits = self.packing and all(
                    u + n <= self.seq_len for u, n in zip(used, lengths, strict=True)
                )
            if fits:
                self.rows[r].append(example)
                self.used[r] = (
                    lengths
                    if used is None
                    else tuple(u + n for u, n in zip(used, lengths, strict=True))
                )
                return True
        return False

    @property
    def empty(self) -> bool:
        return self.used[0] is None

    def tokens(self) -> int:
        """Real tokens placed (first sequence of each example)."""
        return sum(u[0] for u in self.used if u is not None)
