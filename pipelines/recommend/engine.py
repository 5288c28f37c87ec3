"""Where shard work runs: in this process (local) or on a cluster (see flows for Dask)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
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


class LocalEngine:
    """Shards one after another in this process (the default; memory = one shard)."""

    def map_shards(self, fn: ShardFn, shared: Any, paths: Sequence[Path]) -> list[int]:
        """Run the shards in order, logging each one's progress."""
        rows = []
        start = time.perf_counter()
        for i, p in enumerate(paths):
            rows.append(fn(shared, i, p))
            if len(paths) > 1:
                log.info("%s: shard %d/%d done (%d rows, %.1f s so far)",
                         fn.__name__.strip("_").removesuffix("_shard"), i + 1, len(paths),
                         rows[-1], time.perf_counter() - start)
        return rows
