"""Diagnostics shared by every layer: data, config and schema errors, and a data warning."""


class RecsysError(Exception):
    """Base class of the product's own errors; the CLI prints them and exits with code 2."""


class DataError(RecsysError):
    """Input data that cannot be used: says which file, which column and how to fix it."""


class ConfigError(RecsysError):
    """A configuration file or option that is invalid."""


class SchemaError(RecsysError):
    """A table that does not match its contract at a stage boundary."""


class NotFittedError(RecsysError):
    """A model was asked to predict before `fit` was called."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not fitted yet: call fit() first")


class RunLockedError(RecsysError):
    """Another run holds the output folder's lock."""


class DataWarning(UserWarning):
    """Degenerate but usable data; the run goes on."""
