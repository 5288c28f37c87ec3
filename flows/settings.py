"""Process-level settings: thread pinning and Prefect logging, applied before heavy imports."""

from __future__ import annotations

import os


def configure_process() -> None:
    """Pin BLAS/OpenMP threads to 1 unless the operator set them, and route our logs to Prefect.

    Measured on a 2-core machine: multithreaded BLAS under contention made LightGBM 2x and torch
    steps far slower, and implicit warns about (and is slowed by) threaded BLAS.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "features,models,pipelines")
