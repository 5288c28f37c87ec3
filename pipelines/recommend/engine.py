"""Where shard work runs: in this process (local) or on a cluster (see flows for Dask)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

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
        """Run the shards in order."""
        return [fn(shared, i, p) for i, p in enumerate(paths)]
