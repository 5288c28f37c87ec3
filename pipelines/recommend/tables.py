"""A stage's view of the run folder: named tables in, named tables (whole or in shards) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.recommend.engine import Engine, LocalEngine
from pipelines.store import write_bytes_atomic, write_parquet_atomic

WORK = "work"  # sub-folder of a run for the cut-off tables; removed before publish


def table_path(folder: Path, name: str) -> Path:
    """Where table `name` lives: published tables at the top, 'h1/...' ones under work/."""
    return folder / WORK / f"{name}.parquet" if "/" in name else folder / f"{name}.parquet"


def parts_dir(folder: Path, name: str) -> Path:
    """The folder of a sharded table's parts (part-00000.parquet, ...)."""
    return table_path(folder, name).with_suffix(".parts")


def part_paths(folder: Path, name: str) -> list[Path]:
    """A sharded table's parts in shard order, or the single file of a whole table."""
    parts = parts_dir(folder, name)
    if parts.is_dir():
        return sorted(parts.glob("part-*.parquet"))
    return [table_path(folder, name)]


def read_table(folder: Path, name: str) -> pa.Table:
    """A whole table, concatenating a sharded one's parts."""
    paths = part_paths(folder, name)
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@dataclass
class StageIO:
    """Reads a stage's inputs from the run folder and records what it writes."""

    folder: Path
    engine: Engine = field(default_factory=LocalEngine)
    files: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def read(self, name: str) -> pa.Table:
        """A whole input table."""
        return read_table(self.folder, name)

    def parts(self, name: str) -> list[Path]:
        """An input table's shard files."""
        return part_paths(self.folder, name)

    def exists(self, name: str) -> bool:
        """Whether the table was written (whole or in parts)."""
        return table_path(self.folder, name).exists() or parts_dir(self.folder, name).is_dir()

    def write(self, name: str, table: pa.Table) -> None:
        """Write a whole output table."""
        path = write_parquet_atomic(table, table_path(self.folder, name))
        self.files.append(str(path.relative_to(self.folder)))
        self.rows[name] = table.num_rows

    def write_file(self, filename: str, data: bytes) -> None:
        """Write a non-table output (JSON, markdown) at the top of the run folder."""
        path = write_bytes_atomic(data, self.folder / filename)
        self.files.append(str(path.relative_to(self.folder)))

    def shard_paths(self, name: str, n: int) -> list[Path]:
        """Paths for the n parts of a sharded output table (the folder is made empty)."""
        folder = parts_dir(self.folder, name)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*"):
            stale.unlink()
        return [folder / f"part-{i:05d}.parquet" for i in range(n)]

    def record_parts(self, name: str, paths: list[Path], rows: list[int]) -> None:
        """Note the parts written by shard workers (checked against their footers)."""
        for path, n in zip(paths, rows, strict=True):
            if pq.read_metadata(path).num_rows != n:
                raise OSError(f"{path}: footer row count differs from what the shard wrote")
            self.files.append(str(path.relative_to(self.folder)))
        self.rows[name] = int(sum(rows))


def write_part(table: pa.Table, path: Path) -> int:
    """Write one shard's table (atomically) and return its rows."""
    write_parquet_atomic(table, path, part=True)
    return table.num_rows
