"""The stage cache is verified, never shared with a published run, and a damaged entry is a miss."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.nightly import RunConfig, run_nightly
from tests.conftest import published, tiny_config_dict


def fast(tmp_path: Path) -> dict[str, Any]:
    raw = tiny_config_dict(tmp_path)
    raw["ranking"], raw["evaluation"] = "fusion", {"enabled": False}
    return raw


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "cache").rglob("*") if p.is_file()
                  and p.name != "done.json")


@pytest.fixture
def primed(tmp_path: Path) -> tuple[RunConfig, Any]:
    cfg = RunConfig.from_dict(fast(tmp_path))
    return cfg, run_nightly(cfg, run_id="first")


def damage_and_rerun(cfg: RunConfig, victim: Path, damage: str, rng: np.random.Generator,
                     run_id: str, caplog: pytest.LogCaptureFixture) -> Any:
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: int(rng.integers(0, max(len(data) - 1, 1)))]
    else:
        at = int(rng.integers(0, len(data)))
        data[at] ^= 1 << int(rng.integers(0, 8))
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        return run_nightly(cfg, run_id=run_id)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_files_are_recomputed_never_published(
        primed: tuple[RunConfig, Any], damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg, first = primed
    reference = {p.stem: published(first.path, p.stem) for p in first.path.glob("*.parquet")}
    rng = np.random.default_rng(0 if damage == "flip" else 1)
    files = cache_files(cfg.output.root)
    for n in range(6):  # several random files and offsets, fixed seed
        victim = files[int(rng.integers(0, len(files)))]
        stage = victim.relative_to(cfg.output.root / "cache").parts[0]
        again = damage_and_rerun(cfg, victim, damage, rng, f"again{n}", caplog)
        assert stage in caplog.text and "damaged" in caplog.text
        assert stage not in {r.stage for r in again.reports if r.cached}
        for p in again.path.glob("*.parquet"):
            assert published(again.path, p.stem).equals(reference[p.stem]), p.name
        files = cache_files(cfg.output.root)
        caplog.clear()


@pytest.mark.parametrize("damage", ["garbage", "missing-file", "no-files-key"])
def test_damaged_done_json_is_a_miss(primed: tuple[RunConfig, Any], damage: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg, first = primed
    done = next((cfg.output.root / "cache" / "candidates").glob("*/done.json"))
    if damage == "garbage":
        done.write_text("{not json")
    elif damage == "missing-file":
        for f in done.parent.rglob("*.parquet"):
            f.unlink()
    else:
        done.write_text(json.dumps({"rows": {}}))
    with caplog.at_level(logging.WARNING):
        again = run_nightly(cfg, run_id="again")
    assert "candidates" not in {r.stage for r in again.reports if r.cached}
    assert "cache entry" in caplog.text and "candidates" in caplog.text
    assert published(again.path, "recommendations").equals(published(first.path, "recommendations"))


def test_published_files_share_no_inode_with_the_cache(primed: tuple[RunConfig, Any]) -> None:
    cfg, first = primed
    cached = {os.stat(p).st_ino for p in cache_files(cfg.output.root)}
    run_inodes = {os.stat(p).st_ino for p in first.path.rglob("*") if p.is_file()}
    assert not cached & run_inodes
    # A consumer editing a published file in place cannot reach the next run.
    recs = first.path / "recommendations.parquet"
    good = published(first.path, "recommendations")
    size = recs.stat().st_size
    with open(recs, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\x00" * 64)
    again = run_nightly(cfg, run_id="again")
    assert published(again.path, "recommendations").equals(good)
