"""Crash safety: a run SIGKILLed mid-stage or mid-publish never damages the last good run.

Each case runs `python -m flows run --engine local` in a subprocess with the runner's fault
point (RECSYS_FAULT_AT/RECSYS_FAULT_FILE: write the flag file, then hang) set at one stage,
inspects the output root while the process hangs, SIGKILLs it and reruns: the rerun must
publish exactly what an uninterrupted run publishes and leave no staging folder or temp file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.nightly import RunConfig, run_nightly
from pipelines.recommend.stages import Plan, plan
from pipelines.store import latest_run
from tests.conftest import published, tiny_config_dict, to_toml, write_tiny_dataset

REPO = Path(__file__).resolve().parents[2]
STAGE_ORDER = ["ingest", "user_neighbours", "item_neighbours", "als", "candidates", "score",
               "diversify"]
FLAG_TIMEOUT_S = 90.0  # imports plus the stages before the fault point, on a loaded machine


def fast_config(folder: Path, root: Path, seed: int = 0) -> dict[str, Any]:
    """The tiny config (data in `folder`, seeded), fusion ranking, no evaluation, root `root`."""
    folder.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = tiny_config_dict(folder)
    if seed != 0:  # a different night's data: same shape, other interactions
        write_tiny_dataset(folder, seed=seed)
    raw["ranking"] = "fusion"
    raw["evaluation"] = {"enabled": False}
    raw["output"] = {"root": str(root)}
    return raw


def write_config(raw: Mapping[str, Any], path: Path) -> Path:
    path.write_text(to_toml(raw))
    assert RunConfig.from_toml(path).model_dump() == RunConfig.from_dict(dict(raw)).model_dump()
    return path


def start_run(config: Path, run_id: str, *, fault_at: str | None = None,
              flag: Path | None = None) -> subprocess.Popen[str]:
    """`python -m flows run --engine local` in its own process group (so it can be killed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_FAULT")}
    env |= {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if fault_at is not None:
        assert flag is not None
        env |= {"RECSYS_FAULT_AT": fault_at, "RECSYS_FAULT_FILE": str(flag)}
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "run", "--engine", "local", "--config", str(config),
         "--run-id", run_id],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the run's process group (it is the group leader) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def wait_for_flag(proc: subprocess.Popen[str], flag: Path) -> None:
    deadline = time.monotonic() + FLAG_TIMEOUT_S
    while not (flag.exists() and flag.read_text().strip()):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run exited {proc.returncode} before its fault point:\n{out}\n{err}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"no fault flag {flag} after {FLAG_TIMEOUT_S} s")
        time.sleep(0.05)
    assert int(flag.read_text()) == proc.pid  # the hanging process is the one we started


def published_runs(root: Path) -> list[Path]:
    runs = root / "runs"
    return sorted(p for p in runs.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def table_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def assert_every_visible_parquet_complete(root: Path) -> int:
    """Every Parquet file under a non-temporary name anywhere under `root` reads in full."""
    n = 0
    for path in root.rglob("*.parquet"):
        if path.name.startswith("."):
            continue  # a temp name: never read by anyone
        meta = pq.read_metadata(path)  # footer valid
        assert pq.read_table(path).num_rows == meta.num_rows, path
        n += 1
    return n


def assert_run_readable(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    for name, rows in manifest["rows"].items():
        assert pq.read_table(run / f"{name}.parquet").num_rows == rows, name
    assert assert_every_visible_parquet_complete(run) >= len(manifest["rows"])


def leftovers(root: Path) -> list[Path]:
    """Staging folders and temp files anywhere under runs/ and cache/."""
    found = []
    for sub in ("runs", "cache"):
        base = root / sub
        if base.is_dir():
            found += [p for p in base.rglob("*")
                      if p.name.startswith(".staging-") or p.name.endswith(".tmp")]
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run of tonight's data (seed 0), computed from scratch (no cache)."""
    base = tmp_path_factory.mktemp("reference")
    raw = fast_config(base / "data", base / "out")
    raw["output"]["cache"] = False
    res = run_nightly(RunConfig.from_dict(raw), run_id="reference")
    return {"recommendations": published(res.path, "recommendations"),
            "files": table_files(res.path), "rows": res.manifest["rows"]}


@pytest.fixture
def last_night(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A good published run A of last night's data (seed 1); yields (root, tonight's config)."""
    root = tmp_path / "out"
    run_nightly(RunConfig.from_dict(fast_config(tmp_path / "yesterday", root, seed=1)),
                run_id="A")
    tonight = write_config(fast_config(tmp_path / "tonight", root), tmp_path / "tonight.toml")
    yield root, tonight


FAULTS = [
    pytest.param("ingest", id="ingest"),
    pytest.param("user_neighbours", id="neighbourhoods"),
    pytest.param("item_neighbours", id="item-neighbourhoods"),
    pytest.param("als", id="als"),
    pytest.param("candidates", id="candidates"),
    pytest.param("score", id="scoring"),
    pytest.param("diversify", id="diversify"),
    pytest.param("publish", id="publish"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_kill_mid_run_keeps_last_good_and_rerun_recovers(
        fault: str, last_night: tuple[Path, Path], reference: dict[str, Any],
        tmp_path: Path) -> None:
    root, config = last_night
    run_a = root / "runs" / "A"
    files_a = {p: p.read_bytes() for p in run_a.rglob("*") if p.is_file()}
    flag = tmp_path / "fault.flag"
    proc = start_run(config, "B", fault_at=fault, flag=flag)
    try:
        wait_for_flag(proc, flag)
        # --- during the hang: the last good run is untouched and fully readable ---------
        assert latest_run(root) == run_a.resolve()
        assert_run_readable(root / "latest")
        assert published_runs(root) == [run_a]  # B is not visible under a published name
        assert not (root / "runs" / "B").exists()
        staging = root / "runs" / ".staging-B"
        assert staging.is_dir()
        if fault == "publish":
            assert (staging / "manifest.json").is_file()
        else:
            assert not (staging / "manifest.json").exists()
        # Staging, cache and published folders alike: no torn file under a final name.
        assert_every_visible_parquet_complete(root)
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    # --- after the kill: nothing changed for readers --------------------------------------
    assert latest_run(root) == run_a.resolve()
    assert {p: p.read_bytes() for p in run_a.rglob("*") if p.is_file()} == files_a
    # --- rerun with the same config ----------------------------------------------------------
    again = run_nightly(RunConfig.from_toml(config), run_id="B2")
    assert latest_run(root) == again.path.resolve() == (root / "runs" / "B2").resolve()
    recs = published(again.path, "recommendations")
    assert recs.equals(reference["recommendations"])
    assert table_files(again.path) == reference["files"]
    assert again.manifest["rows"] == reference["rows"]
    assert_run_readable(again.path)
    assert leftovers(root) == []
    assert published_runs(root) == [run_a, again.path]
    # Finished stages came from the cache; the killed stage and everything after it re-ran.
    # Two stages run at once, so a stage beside the killed one may have finished too.
    cached = {r.stage for r in again.reports if r.cached}
    if fault == "publish":
        assert cached == set(STAGE_ORDER)
    else:
        p = plan(RunConfig.from_toml(config))
        assert upstream_closure(p, fault) <= cached
        assert not cached & ({fault} | downstream_closure(p, fault))


def upstream_closure(p: Plan, name: str) -> set[str]:
    """Every stage `name` waits for, directly or not."""
    out: set[str] = set()
    todo = [name]
    while todo:
        for u in p.upstream(p.stage(todo.pop())):
            if u.name not in out:
                out.add(u.name)
                todo.append(u.name)
    return out


def downstream_closure(p: Plan, name: str) -> set[str]:
    """Every stage that waits for `name`, directly or not."""
    return {s.name for s in p.stages if name in upstream_closure(p, s.name)}


@pytest.mark.slow
def test_second_run_fails_fast_while_first_holds_the_lock(
        last_night: tuple[Path, Path], reference: dict[str, Any], tmp_path: Path) -> None:
    from flows.cli import app

    root, config = last_night
    flag = tmp_path / "fault.flag"
    first = start_run(config, "first", fault_at="candidates", flag=flag)
    try:
        wait_for_flag(first, flag)
        staging = root / "runs" / ".staging-first"
        before = {p.name: p.stat().st_mtime_ns for p in staging.iterdir()}
        start = time.monotonic()
        second = CliRunner().invoke(app, ["run", "--engine", "local", "--config", str(config),
                                          "--run-id", "second"])
        elapsed = time.monotonic() - start
        assert second.exit_code == 2, second.output
        assert "another run" in second.output and str(root) in second.output
        assert elapsed < 5.0  # fail fast, no waiting on the lock
        # The loser touched nothing: no folder of its own, the winner's staging intact.
        assert not (root / "runs" / ".staging-second").exists()
        assert not (root / "runs" / "second").exists()
        assert {p.name: p.stat().st_mtime_ns for p in staging.iterdir()} == before
        assert latest_run(root) == (root / "runs" / "A").resolve()
    finally:
        kill(first)
    again = run_nightly(RunConfig.from_toml(config), run_id="first-rerun")
    assert published(again.path, "recommendations").equals(reference["recommendations"])
    assert [p.name for p in published_runs(root)] == ["A", "first-rerun"]
    assert leftovers(root) == []


def lock_holder(root: Path) -> int | None:
    """The pid written into `<root>/.lock` by the run holding it, if any yet."""
    try:
        text = (root / ".lock").read_text()
    except FileNotFoundError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


@pytest.mark.slow
def test_two_runs_started_at_once_one_fails_and_output_is_never_mixed(
        tmp_path: Path, reference: dict[str, Any]) -> None:
    root = tmp_path / "out"
    config = write_config(fast_config(tmp_path / "tonight", root), tmp_path / "tonight.toml")
    procs = {name: start_run(config, name) for name in ("one", "two")}
    try:
        # Freeze whichever run takes the lock first, so the other surely meets it held.
        deadline = time.monotonic() + FLAG_TIMEOUT_S
        while (holder := lock_holder(root)) is None:
            assert time.monotonic() < deadline, "no run took the lock"
            time.sleep(0.005)
        os.kill(holder, signal.SIGSTOP)
        winner = next(n for n, p in procs.items() if p.pid == holder)
        loser = next(n for n in procs if n != winner)
        assert procs[winner].poll() is None, "the winner finished before it could be paused"
        out, err = procs[loser].communicate(timeout=FLAG_TIMEOUT_S)
        assert procs[loser].returncode == 2, out + err
        assert "another run" in err and str(root) in err
        os.kill(holder, signal.SIGCONT)
        out, err = procs[winner].communicate(timeout=FLAG_TIMEOUT_S)
        assert procs[winner].returncode == 0, out + err
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                kill(proc)
    assert [p.name for p in published_runs(root)] == [winner]
    assert latest_run(root) == (root / "runs" / winner).resolve()
    run = root / "runs" / winner
    assert published(run, "recommendations").equals(reference["recommendations"])
    assert table_files(run) == reference["files"]
    assert_run_readable(run)
    assert leftovers(root) == []


def test_toml_writer_round_trips(tmp_path: Path) -> None:
    raw = fast_config(tmp_path, tmp_path / "out")
    raw["source"]["quote"] = 'say "hi"\\'
    write_config(raw, tmp_path / "c.toml")  # asserts TOML and mapping give the same config
