"""Shared CLI plumbing: turn the product's errors into a clear message and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from pydantic import ValidationError

from features.errors import RecsysError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USAGE = 2  # bad input, bad config, locked output
EXIT_FAILED = 1  # the job ran and failed


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a typer command: product errors print `error: ...` to stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (RecsysError, ValidationError, FileNotFoundError, IsADirectoryError,
                PermissionError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper
