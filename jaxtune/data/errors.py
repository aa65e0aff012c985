"""Data errors that name the file and row, and the counts reported when bad rows are skipped."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

from jaxtune.errors import UserError


class DataError(UserError):
    """A dataset, a row or a data setting that cannot be used; the message says which."""


class BadRow(Exception):
    """Raised inside row processing; the caller adds the file and row number (see `where`)."""

    def __init__(self, reason: str, kind: str = "bad row"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class DropRow(BadRow):
    """A well-formed row that teaches nothing (e.g. identical chosen and rejected): always skipped
    and counted, never an error."""


class TemplateBreaksPrefix(DataError):
    """The chat template does not render a conversation as the concatenation of its turns."""


class DataWarning(UserWarning):
    """Rows skipped, truncated or dropped (with counts)."""


def where(source: str, row: int) -> str:
    """`file.jsonl, row 12` (rows count from 1, as lines of a JSONL file do; a CSV file's line
    is given too, since its header takes line 1)."""
    if source.endswith(".csv"):
        return f"{source}, row {row + 1} (line {row + 2})"
    return f"{source}, row {row + 1}"


@dataclass
class RowStats:
    """What happened to the rows of one source: kept, truncated, and skipped by reason."""

    source: str
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skipped: dict[str, str] = field(default_factory=dict)

    def skip(self, kind: str, message: str) -> None:
        self.skipped[kind] += 1
        self.first_skipped.setdefault(kind, message)

    def warn(self) -> None:
        """One warning with counts when anything was skipped or truncated."""
        if not self.skipped and not self.truncated:
            return
        parts = [f"{n} {kind}" for kind, n in sorted(self.skipped.items())]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to the cut-off")
        examples = "; ".join(f"first {k}: {m}" for k, m in sorted(self.first_skipped.items()))
        warnings.warn(
            f"{self.source}: kept {self.kept} of {self.rows} rows ({', '.join(parts)}). {examples}",
            DataWarning,
            stacklevel=3,
        )
