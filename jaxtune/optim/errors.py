"""The optimizer's user-facing error."""

from __future__ import annotations

from jaxtune.errors import UserError


class OptimError(UserError):
    """A bad `optim` config value or a params tree the chosen optimizer cannot handle."""
