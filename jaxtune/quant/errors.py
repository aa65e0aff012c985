"""Errors of the quantization transforms: each names the weight at fault and what to do."""

from jaxtune.errors import UserError


class QuantizationError(UserError):
    """A quantization request that cannot be applied (bad target, block size, or method)."""
