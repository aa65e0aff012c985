"""Errors that speak to the user. The CLI prints these without a traceback and exits non-zero."""


class UserError(ValueError):
    """Bad input (a file, a row, a config key): the message says which and what to do."""


class CheckpointError(UserError):
    """A model checkpoint that is missing, unsupported, or does not fit its config."""
