"""Process-level settings: thread pinning, log levels and Prefect's environment, set early."""

from __future__ import annotations

import enum
import logging
import os
import sys

from pipelines.recommend.engine import limit_malloc_arenas

PROJECT_LOGGERS = ("features", "models", "pipelines", "flows")
"""The product's loggers: shown in the terminal and sent to the Prefect run logs."""

LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


class Verbosity(enum.IntEnum):
    """How much the product logs: --quiet, the default, --verbose."""

    QUIET = logging.WARNING
    NORMAL = logging.INFO
    VERBOSE = logging.DEBUG


_verbosity = Verbosity.NORMAL


def configure_process(verbosity: Verbosity | None = None) -> None:
    """Pin BLAS/OpenMP threads and malloc arenas, route our loggers to Prefect, set levels.

    Call before Prefect is imported: Prefect reads its logging settings once, at import.
    `verbosity=None` keeps what an earlier call (the CLI's -q/-v) chose.

    Measured on a 2-core machine: multithreaded BLAS under contention made LightGBM 2x and torch
    steps far slower, and implicit warns about (and is slowed by) threaded BLAS.
    """
    global _verbosity
    if verbosity is not None:
        _verbosity = verbosity
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    limit_malloc_arenas()  # before any thread of ours allocates (see MALLOC_ARENAS)
    extra = [n.strip() for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",")]
    extra = [n for n in extra if n]
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(
        extra + [n for n in PROJECT_LOGGERS if n not in extra])
    # Prefect's own temporary server (flows called outside flows.server.prefect_api): no
    # telemetry heartbeat (its "database is locked" traceback) and time to migrate the database.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # our loggers also log outside flow runs (server start, CLI checks): no API warning then
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    if _verbosity is Verbosity.QUIET:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # no per-task "Finished" lines either
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(_verbosity)


def console_logging() -> None:
    """Print our loggers on stderr when no Prefect engine does it (the `local` engine)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
