"""Shared CLI plumbing: option types, and clean messages and exit codes for expected failures."""

from __future__ import annotations

import enum
import errno
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar, get_type_hints

import typer
from pydantic import ValidationError

from features.errors import RecsysError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USAGE = 2
"""Bad input, bad config, a locked output: the product's own errors. Fix the input, rerun."""
EXIT_FAILED = 1
"""The job failed: an operating-system fault (with a clean message), no Prefect API, or a bug
(with its traceback)."""
EXIT_INTERRUPTED = 130

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
"""For every Typer app: `-h` works like `--help` (click passes it on to sub-commands)."""


class Engine(enum.StrEnum):
    """Where a job runs."""

    prefect = "prefect"
    local = "local"
    dask = "dask"


class Device(enum.StrEnum):
    """Where torch computes."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


EngineOpt = Annotated[Engine, typer.Option(
    "--engine", "-e", case_sensitive=False,
    help="prefect: a real flow run, visible in the Prefect UI (a temporary local server when "
    "PREFECT_API_URL is not set); local: the same work without Prefect.")]
RunEngineOpt = Annotated[Engine | None, typer.Option(
    "--engine", "-e", case_sensitive=False, show_default=False,
    help="prefect: a real flow run, visible in the Prefect UI (a temporary local server when "
    "PREFECT_API_URL is not set); local: the same work without Prefect; dask: a Prefect flow "
    "whose shard work runs on a Dask cluster ([engine] address, or a LocalCluster). Default: "
    "[engine] kind of the config (prefect).")]
DeviceOpt = Annotated[Device, typer.Option(
    case_sensitive=False, help="auto (CUDA when available), cpu or cuda.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Log warnings and errors only.")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Log debug detail from the product's own code.")]


def escape_markup(text: str) -> str:
    r"""Escape Rich markup in help text: `[vae]` would otherwise vanish from `--help`."""
    return text.replace("[", r"\[")


# errno -> what to do about it; the message names the path from the exception.
OS_FAULT_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space on that file system or choose another --output",
    errno.EDQUOT: "free space within your quota or choose another --output",
    errno.EROFS: "the file system is read-only: choose a writable --output",
    errno.EACCES: "check its permissions or choose another --output",
    errno.EPERM: "check its permissions or choose another --output",
    errno.ENOTDIR: "a file stands where a folder is needed: move that file away or choose "
                   "another --output",
    errno.EEXIST: "something that is not a folder is in the way: move it away or choose "
                  "another --output",
    errno.EISDIR: "a folder stands where a file is needed: move it away or pass a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "a symbolic link points to itself: remove it",
    errno.EMFILE: "raise the open-files limit (ulimit -n)",
}


def describe_os_fault(exc: OSError) -> str | None:
    """`error: ...` text for an OS fault a user can fix, or None for anything else."""
    fix = OS_FAULT_FIXES.get(exc.errno or -1)
    if fix is None:
        return None
    paths = [str(Path(p)) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(path not known)"
    return f"{where}: {exc.strerror or exc}; {fix}"


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a typer command so that expected failures print `error: ...`, not a traceback.

    The product's errors (and deliberate OSError messages raised by our own checks, which carry
    no errno) exit 2; user-fixable OS faults and an unreachable Prefect API exit 1 with the path
    or URL and the fix; anything else is a bug and keeps its traceback (exit 1).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from flows.server import PrefectServerError

        try:
            return fn(*args, **kwargs)
        except (RecsysError, ValidationError) as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except PrefectServerError as exc:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:
            if exc.errno is None and exc.args:  # raise FileNotFoundError("... ; fix") in our code
                typer.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_USAGE)
            message = describe_os_fault(exc)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def escape_help_markup(app: typer.Typer) -> None:
    """Escape Rich markup in every help text of `app` and its sub-apps, once.

    Typer renders help through Rich, which takes `[vae]` or `[source]` for a style tag and
    drops it; our help texts mean the brackets literally (TOML tables, optional parts).
    """
    seen: set[int] = set()

    def fix(info: object) -> None:
        help_text = getattr(info, "help", None)
        if id(info) not in seen and isinstance(help_text, str):
            seen.add(id(info))
            info.help = escape_markup(help_text)  # type: ignore[attr-defined]

    def walk(group: typer.Typer) -> None:
        fix(group.info)
        for command in group.registered_commands:
            if command.help is None and command.callback is not None:
                command.help = inspect.getdoc(command.callback)
            fix(command)
            if command.callback is None:
                continue
            hints = get_type_hints(command.callback, include_extras=True)
            for name, param in inspect.signature(command.callback).parameters.items():
                for meta in (*getattr(hints.get(name), "__metadata__", ()), param.default):
                    if isinstance(meta, typer.models.ParameterInfo):
                        fix(meta)
        for sub in group.registered_groups:
            fix(sub)
            if sub.typer_instance is not None:
                walk(sub.typer_instance)

    if not getattr(app, "_help_escaped", False):
        walk(app)
        app._help_escaped = True  # type: ignore[attr-defined]
