"""Crash-safe run folders: atomic file writes, a staging folder published by rename, a run lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import ConfigError, RunLockedError

STAGING_PREFIX = ".staging-"
LATEST = "latest"
MANIFEST = "manifest.json"


def _tmp_name(path: Path) -> Path:
    # Same folder, so os.replace is an atomic rename on one file system; dot-prefixed so
    # globbing "*.parquet" never sees it.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """How every product table is written: zstd level 1, dictionaries for all but floats.

    Scores and factors are nearly all distinct, so a dictionary page only costs time; ids,
    ranks and source lists repeat and shrink well. Level 1 writes ~1.5x faster than zstd's
    default for a few per cent more bytes (measured on the books-shaped candidates).
    """
    paths = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
             for f in schema if not pa.types.is_floating(f.type)]
    return {"compression": "zstd", "compression_level": 1, "use_dictionary": paths}


def part_options(schema: pa.Schema) -> dict[str, Any]:
    """How shard parts are written: lz4 and no column statistics, dictionaries as published.

    A part is read whole by the next stage and re-encoded when it is published, so nothing
    prunes on its statistics: lz4 without them writes a candidates part 1.6x faster than the
    published options for ~10% more bytes (measured on the books-shaped candidates).
    """
    options = parquet_options(schema)
    del options["compression_level"]
    return {**options, "compression": "lz4", "write_statistics": False}


def write_parquet_atomic(table: pa.Table, path: Path, *, part: bool = False) -> Path:
    """Write `table` to `path` so that a reader sees either the old file or the whole new one.

    The file is written under a temporary name in the same folder, flushed, its footer re-read
    (a torn write fails here, not downstream), then renamed into place. `part` writes it with
    the options of a shard part (`part_options`) instead of a published table's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        options = part_options(table.schema) if part else parquet_options(table.schema)
        pq.write_table(table, tmp, **options)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        footer = pq.read_metadata(tmp)
        if footer.num_rows != table.num_rows:
            raise OSError(f"{tmp}: footer says {footer.num_rows} rows, wrote {table.num_rows}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """Write raw bytes (JSON, PNG, markdown, checkpoints) atomically: temp name, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: Path) -> Path:
    """Write JSON (sorted keys, indented) atomically."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it into place, else delete it.

    For writers that want a file name (torch.save, matplotlib savefig, DuckDB databases).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
"""Run ids: letters, digits, '_' and '-', starting with a letter or digit, at most 100
characters. No dots or slashes, so an id can never be a path, a temporary or staging name."""
RESERVED = frozenset({LATEST, "cache"})


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is a valid run id, else raise ConfigError saying what is allowed."""
    if not RUN_ID_PATTERN.fullmatch(run_id) or run_id.lower() in RESERVED:
        raise ConfigError(
            f"invalid run id {run_id!r}: use 1-100 letters, digits, '_' or '-', starting with a "
            f"letter or digit, and not {sorted(RESERVED)} (e.g. 2026-12-01-nightly)")
    return run_id


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time stamp plus a short random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def output_lock(root: Path, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the output folder `root`, or raise RunLockedError.

    `wait_s=0` fails fast; a positive value waits up to that long. The lock is an flock on
    `root/.lock`, released by the kernel if the process dies, so a SIGKILL never leaves it stuck.
    """
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / ".lock", "a+")  # noqa: SIM115 - held for the context's lifetime
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise RunLockedError(
                        f"another run is writing to {root} (lock held by {holder}); wait for it "
                        "to finish or use a different --output folder"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


@dataclass
class RunFolder:
    """One run's output folder: written under `runs/.staging-<id>/`, published as `runs/<id>/`.

    Nothing under `runs/<id>/` exists until `publish()` renames the complete staging folder into
    place and then repoints `runs/latest`; a crash before that leaves only a staging folder,
    which `clean_stale()` removes on the next run. The last good run is never touched.
    """

    root: Path
    run_id: str
    staging: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.staging = self.root / "runs" / f"{STAGING_PREFIX}{self.run_id}"

    @property
    def final(self) -> Path:
        """Where the run appears once published."""
        return self.root / "runs" / self.run_id

    def create(self) -> RunFolder:
        """Make a fresh staging folder (removing a leftover one of the same id)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        return self

    def path(self, *parts: str) -> Path:
        """A path inside the staging folder."""
        return self.staging.joinpath(*parts)

    def write_table(self, name: str, table: pa.Table, subdir: str = "") -> Path:
        """Write one named table as `<subdir>/<name>.parquet` in the staging folder."""
        return write_parquet_atomic(table, self.staging / subdir / f"{name}.parquet")

    def publish(self, manifest: Mapping[str, Any], *, update_latest: bool = True) -> Path:
        """Write the manifest last, rename staging to its final name, then repoint `latest`."""
        write_json_atomic(dict(manifest), self.staging / MANIFEST)
        fault_point("publish")
        if self.final.exists():
            raise FileExistsError(f"{self.final} already exists; run ids must be unique")
        os.replace(self.staging, self.final)
        _fsync_dir(self.final.parent)
        if update_latest:
            point_latest(self.root, self.run_id)
        return self.final

    def discard(self) -> None:
        """Remove the staging folder (after a failure)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def point_latest(root: Path, run_id: str) -> None:
    """Atomically repoint `<root>/latest` (a relative symlink) at `runs/<run_id>`.

    The link lives beside `runs/`, not in it, so `runs/*/recommendations.parquet` matches
    every published run exactly once.
    """
    tmp = root / f".{LATEST}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(f"runs/{run_id}", tmp)
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)
    legacy = root / "runs" / LATEST  # where earlier versions kept it
    if legacy.is_symlink():
        legacy.unlink()


def check_output_root(root: Path) -> None:
    """Fail before any work when the output root cannot hold runs: name the path and the fix."""
    from features.errors import ConfigError

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output root {root} is a file, not a folder; remove it or choose "
                          "another --output")
    for name in ("runs", "cache"):
        if (root / name).exists() and not (root / name).is_dir():
            raise ConfigError(f"{root / name} is a file where the output needs a folder; move "
                              "it away or choose another --output")
    if (root / ".lock").is_dir():
        raise ConfigError(f"{root / '.lock'} is a folder where the run lock file goes; remove "
                          "it (no run holds it) or choose another --output")
    link = root / LATEST
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is a real file or folder, so the newest run cannot be "
                          "linked there; move it away (published runs are under runs/)")


def clean_stale(root: Path) -> list[Path]:
    """Delete staging folders and temp files left by crashed runs (call holding the lock)."""
    removed: list[Path] = []
    runs = root / "runs"
    if not runs.is_dir():
        return removed
    for entry in runs.iterdir():
        if entry.name.startswith(STAGING_PREFIX) or entry.name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    for tmp in runs.glob("*/**/.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    for tmp in root.glob(f".{LATEST}.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def latest_run(root: Path) -> Path | None:
    """The run folder `<root>/latest` points at, or None before the first published run."""
    link = Path(root) / LATEST
    return link.resolve() if link.is_symlink() and link.exists() else None


def fault_point(name: str) -> None:
    """Crash-test hook: when RECSYS_FAULT_AT names this point, signal and hang until killed.

    The crash-safety tests set RECSYS_FAULT_AT=<stage> and RECSYS_FAULT_FILE=<path>, wait for
    the file, then SIGKILL the process mid-stage. Unset (always, in production) it does nothing.
    """
    if os.environ.get("RECSYS_FAULT_AT") != name:
        return
    flag = os.environ.get("RECSYS_FAULT_FILE")
    if flag and os.environ.get("RECSYS_FAULT_ONCE"):
        # One-shot, claimed atomically: of several workers that reach the point together only
        # one hangs; the others, and a restarted worker retrying the task, run through.
        try:
            os.close(os.open(f"{flag}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if flag:
        tmp = Path(f"{flag}.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(flag)  # the waiting test never reads a half-written pid
    time.sleep(3600)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (same file system), else copy; `dst` appears atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
