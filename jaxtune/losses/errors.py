"""Errors of the loss functions (bad loss names and hyper-parameters from a config)."""

from jaxtune.errors import UserError


class LossConfigError(UserError):
    """A loss type or hyper-parameter that cannot be used: the message names it and the choices."""
