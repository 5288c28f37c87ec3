"""The stage cache: a finished stage's files by content key, checksummed and verified on reuse."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipelines.store import write_json_atomic

log = logging.getLogger(__name__)

DONE = "done.json"


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy src to dst (a new inode, appearing atomically) and return the bytes' sha256."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def entry(root: Path, stage: str, key: str) -> Path:
    """The cache folder of one stage key."""
    return root / "cache" / stage / key


def restore(cache: Path, folder: Path) -> dict[str, Any] | None:
    """Copy a cached stage's files into `folder`, verifying each checksum; None on a miss.

    A missing, unreadable or mismatching entry is a miss: it is logged with its path, deleted
    and the stage recomputes. Nothing unverified reaches the run folder.
    """
    done = cache / DONE
    if not done.is_file():
        return None
    restored: list[Path] = []
    try:
        meta = json.loads(done.read_text())
        files: dict[str, dict[str, Any]] = meta["files"]
        for name, info in files.items():
            target = folder / name
            got = copy_hashed(cache / name, target)
            restored.append(target)
            if got != info["sha256"]:
                raise ValueError(f"{name}: checksum {got[:12]} differs from {info['sha256'][:12]}")
        return {"rows": dict(meta["rows"]), "info": meta.get("info")}
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("cache entry %s is damaged (%s); recomputing the stage and replacing it",
                    cache, exc)
        for path in restored:
            path.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        return None


def store(cache: Path, folder: Path, files: list[str], rows: dict[str, int],
          info: Any = None) -> None:
    """Copy a finished stage's files into its cache folder with their checksums.

    Written under a temporary name and renamed, `done.json` last, so a crash or a full disk
    leaves no entry that a later run would trust.
    """
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sums = {name: {"sha256": copy_hashed(folder / name, tmp / name),
                       "bytes": (folder / name).stat().st_size} for name in files}
        write_json_atomic({"files": sums, "rows": rows, "info": info}, tmp / DONE)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune(root: Path, keep: set[str]) -> None:
    """Drop cached stage outputs other than `keep` ("stage/key") and crash leftovers."""
    cache = root / "cache"
    if not cache.is_dir():
        return
    for item in cache.glob("*/*"):
        if f"{item.parent.name}/{item.name}" not in keep:
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
