"""Errors of the PEFT transforms: each names the path, key or file at fault and what to do."""

from jaxtune.errors import UserError


class TargetError(UserError):
    """A `targets=` spec that selects no weight (or a weight that cannot be adapted)."""


class RankError(UserError):
    """An adapter rank larger than the weight it adapts allows."""


class AdapterFileError(UserError):
    """An adapter directory whose config, keys or shapes do not fit the model."""


class MergeError(UserError):
    """A transform that cannot be folded into a dense weight (e.g. nonlinear Houlsby adapters)."""
