"""Where shard work runs: in this process (local) or on a cluster (see flows for Dask)."""

from __future__ import annotations

import ctypes
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

ShardFn = Callable[[Any, int, Path], int]
"""fn(shared, shard_index, out_path) -> rows written: computes one shard, writes its Parquet."""


class Engine(Protocol):
    """Runs one function over many shards; each call writes its own output file."""

    def map_shards(self, fn: ShardFn, shared: Any, paths: Sequence[Path]) -> list[int]:
        """Call fn(shared, i, paths[i]) for every shard; returns the rows each wrote, in order."""
        ...


LOCAL_THREADS = 2
"""Stages at once, and shards at once within a stage, in one process (the flows' task
threads and `run_nightly`): the heavy work (ALS, LightGBM, the compiled kernels, polars,
Parquet) releases the GIL, so two threads keep two cores busy."""

MALLOC_ARENAS = 2
"""glibc malloc arenas in a night's process (glibc's default is 8 per core). Every thread
that meets a busy arena gets one of its own, and memory freed in one arena serves only the
threads of that arena: the stage and shard threads then each keep their own high-water mark.
Two arenas took ML-1M 1-2999's peak RSS from 1.48-1.51 to 1.23 GB at the same speed (paired
runs of bench/scale.py)."""

_M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (see `MALLOC_ARENAS`); False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # another C library (musl) has no such setting
        return False



class LocalEngine:
    """Shards in this process, `threads` at a time (memory = that many shards)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, threads)

    def map_shards(self, fn: ShardFn, shared: Any, paths: Sequence[Path]) -> list[int]:
        """Run every shard, logging each one's progress; the rows each wrote, in shard order."""
        name = fn.__name__.strip("_").removesuffix("_shard")
        start = time.perf_counter()

        def one(i: int) -> int:
            rows = fn(shared, i, paths[i])
            if len(paths) > 1:
                log.info("%s: shard %d/%d done (%d rows, %.1f s so far)", name, i + 1,
                         len(paths), rows, time.perf_counter() - start)
            return rows
        if self.threads == 1 or len(paths) <= 1:
            return [one(i) for i in range(len(paths))]
        with ThreadPoolExecutor(self.threads, thread_name_prefix="shard") as pool:
            return list(pool.map(one, range(len(paths))))
