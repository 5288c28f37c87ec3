"""The run manifest, the checks before publish, and pruning of old runs."""

from __future__ import annotations

import functools
import json
import logging
import platform
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import candidates as cand
from pipelines import diversify as div
from pipelines import ingest, offline
from pipelines.neighbours import neighbours_schema
from pipelines.recommend.config import RunConfig
from pipelines.recommend.engine import LOCAL_THREADS, Engine, LocalEngine
from pipelines.recommend.stages import RECOMMENDATIONS_SCHEMA, RUN_ID, Plan, published_tables
from pipelines.recommend.tables import WORK, parts_dir, table_path
from pipelines.store import (
    MANIFEST,
    STAGING_PREFIX,
    RunFolder,
    parquet_options,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    from pipelines.recommend.runner import StageReport

log = logging.getLogger(__name__)

EXPECTED: dict[str, pa.Schema] = {
    "user_neighbours": neighbours_schema("user_id"),
    "item_neighbours": neighbours_schema("item_id"),
    "candidates": cand.CANDIDATES_SCHEMA,
    "scored": div.SCORED_SCHEMA,
    "recommendations": RECOMMENDATIONS_SCHEMA,
    "evaluation": offline.EVALUATION_SCHEMA,
}


def fingerprint(cfg: RunConfig) -> dict[str, str]:
    """sha256 of every input file (the data fingerprint in the manifest)."""
    out = {}
    ingest.check_file(cfg.source.path, "interactions")  # the same clear errors as ingest
    for item in cfg.source.items:
        ingest.check_file(item.path, "items")
    for path in [cfg.source.path, *(it.path for it in cfg.source.items)]:
        stat = Path(path).stat()
        out[str(path)] = _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    return out


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached per (path, size, mtime): every stage key asks for it."""
    return ingest.file_sha256(Path(path))


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results."""
    out = {"python": platform.python_version()}
    for pkg in ("recsys-nightly", "prefect", "polars", "implicit", "lightgbm", "duckdb",
                "pyarrow", "numpy", "scipy", "numba", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest_for(run: RunFolder, p: Plan, cfg: RunConfig, reports: list[StageReport],
                 started: datetime) -> dict[str, Any]:
    """The manifest written last into a run: config, fingerprint, counts, timings, versions."""
    info = {r.stage: r.info for r in reports if r.info}
    ingest_info = info.get("ingest") or {}
    tables = set(published_tables(p))
    rejected = pq.read_metadata(table_path(run.staging, "rejected")).num_rows
    return {
        "run_id": run.run_id,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "data_fingerprint": ingest_info.get("fingerprint") or fingerprint(cfg),
        "ingest": ingest_info.get("report", {}),
        "rows": {k: v for r in reports for k, v in r.rows.items() if k in tables},
        "seconds": {r.stage: r.seconds for r in reports},
        "peak_rss_mb": {r.stage: r.peak_rss_mb for r in reports},
        "cached": sorted(r.stage for r in reports if r.cached),
        "scored_by": (info.get("score") or {}).get("scored_by"),
        "evaluation": info.get("evaluate") or {"status": "disabled"},
        "rejected_rows": rejected,
        "versions": versions(),
    }


def combine_parts(folder: Path, name: str, run_id: str | None = None, *,
                  keep_parts: bool = False) -> None:
    """Stream a sharded table's parts into one Parquet file (one row group per part).

    With `run_id` the constant column is added on the way, in the same single pass. The
    parts are removed afterwards unless `keep_parts` (later stages still read them).
    """
    parts = sorted(parts_dir(folder, name).glob("part-*.parquet"))
    schema = pq.read_schema(parts[0])
    out_schema = schema if run_id is None else schema.append(
        pa.field(RUN_ID, pa.string(), nullable=False))
    target = table_path(folder, name)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.combine.tmp")
    try:
        with pq.ParquetWriter(tmp, out_schema, **parquet_options(out_schema)) as writer:
            for part in parts:
                table = pq.read_table(part).cast(schema)
                if run_id is not None:
                    table = table.append_column(out_schema.field(RUN_ID), pa.repeat(
                        pa.scalar(run_id, pa.string()), table.num_rows))
                # One row group per part, whatever its size: readers rely on no user
                # spanning two.
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
        footer = pq.read_metadata(tmp)
        expected = sum(pq.read_metadata(pt).num_rows for pt in parts)
        if footer.num_rows != expected:
            raise OSError(f"{target}: combined {footer.num_rows} rows, parts hold {expected}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    if not keep_parts:
        shutil.rmtree(parts_dir(folder, name))


_combiner: ThreadPoolExecutor | None = None
_early: dict[Path, list[Future[None]]] = {}
_early_lock = threading.Lock()


def combine_early(folder: Path, p: Plan, writes: tuple[str, ...]) -> None:
    """Start combining a finished stage's sharded published tables in a background thread.

    The night's last minutes would otherwise re-encode the whole candidates and scored
    tables one after the other; begun as soon as their stage ends, the work overlaps the
    stages still running. The parts stay (later stages read them). `finalise` waits for
    these, re-verifies the files and removes the parts of each table combined in place.
    Only for a staging folder on this machine (the local engine).
    """
    global _combiner
    if not folder.name.startswith(STAGING_PREFIX):
        return
    run_id = folder.name.removeprefix(STAGING_PREFIX)
    names = [t for t in writes if t in set(published_tables(p))
             and parts_dir(folder, t).is_dir()]
    with _early_lock:
        if _combiner is None:
            _combiner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        for name in names:
            _early.setdefault(folder, []).append(_combiner.submit(
                combine_parts, folder, name, run_id, keep_parts=True))


def settle(folder: Path) -> None:
    """Wait for the folder's background combines; a failed one leaves the parts to finalise."""
    with _early_lock:
        futures = _early.pop(folder, [])
    for future in futures:
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - finalise combines from the parts again
            log.warning("early combine failed (%s); combining at publish instead", exc)


def add_run_id(path: Path, run_id: str) -> None:
    """Rewrite a table with a constant `run_id` column, one row group at a time."""
    source = pq.ParquetFile(path)
    schema = source.schema_arrow.append(pa.field(RUN_ID, pa.string(), nullable=False))
    tmp = path.with_name(f".{path.name}.run_id.tmp")
    with pq.ParquetWriter(tmp, schema, **parquet_options(schema)) as writer:
        if source.metadata.num_row_groups == 0:
            writer.write_table(schema.empty_table())
        for g in range(source.metadata.num_row_groups):
            part = source.read_row_group(g)
            writer.write_table(part.append_column(
                schema.field(RUN_ID), pa.repeat(pa.scalar(run_id, pa.string()), part.num_rows)))
    tmp.replace(path)


def _publishable(shared: tuple[Path, list[str], str], i: int, path: Path) -> int:
    """Table i as it is published: its parts combined (or itself) with the run_id column."""
    folder, names, run_id = shared
    parts = parts_dir(folder, names[i])
    if parts.is_dir() and path.exists() and RUN_ID in pq.read_schema(path).names:
        shutil.rmtree(parts)  # a rerun after the combined file was already in place
    elif parts.is_dir():
        combine_parts(folder, names[i], run_id)
    elif RUN_ID not in pq.read_schema(path).names:  # a task rerun after a lost worker
        add_run_id(path, run_id)
    return pq.read_metadata(path).num_rows


def finalise(run: RunFolder, p: Plan, manifest: dict[str, Any], engine: Engine | None = None
             ) -> None:
    """Make the staging folder what will be published, and verify every table in it.

    Sharded tables become one file each (on a cluster, one table per worker task), the
    cut-off tables are removed, and each published table's footer is read back: its row count
    must match the manifest and its schema the table's contract. A mismatch fails the run
    before anything is published.
    """
    folder = run.staging
    settle(folder)
    names = published_tables(p)
    (engine or LocalEngine(LOCAL_THREADS)).map_shards(
        _publishable, (folder, names, run.run_id), [table_path(folder, n) for n in names])
    shutil.rmtree(folder / WORK, ignore_errors=True)
    for name in names:
        path = table_path(folder, name)
        try:
            meta = pq.read_metadata(path)
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise OSError(f"{path} cannot be read back before publish: {exc}") from exc
        if meta.num_rows != manifest["rows"].get(name, meta.num_rows):
            raise OSError(f"{path} holds {meta.num_rows} rows, its stage wrote "
                          f"{manifest['rows'][name]}")
        want = EXPECTED.get(name)
        if want is not None:
            want = want.append(pa.field(RUN_ID, pa.string(), nullable=False))
        if want is not None and not schema.remove_metadata().equals(want, check_metadata=False):
            raise OSError(f"{path} schema differs from the {name} contract:\n{schema}\n"
                          f"expected\n{want}")


def published_at(run_dir: Path) -> str:
    """A published run's finish time from its manifest ('' when unreadable)."""
    try:
        return str(json.loads((run_dir / MANIFEST).read_text()).get("finished", ""))
    except (OSError, ValueError):
        return ""


def prune_runs(root: Path, keep: int) -> list[Path]:
    """Delete the oldest published runs beyond `keep`, by publish time (never `latest`)."""
    from pipelines.store import latest_run

    runs_dir = root / "runs"
    latest = latest_run(root)
    published = [p for p in runs_dir.iterdir()
                 if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                 and (p / MANIFEST).exists() and (p / "recommendations.parquet").exists()]
    published.sort(key=lambda p: (published_at(p), p.name))
    doomed = [p for p in published[:-keep] if p != latest] if len(published) > keep else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def write_table(run: RunFolder, name: str, table: pa.Table) -> Path:
    """Write a whole table into the staging folder."""
    return write_parquet_atomic(table, table_path(run.staging, name))
