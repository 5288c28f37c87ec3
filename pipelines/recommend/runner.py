"""Runs the planned stages over a staging folder, with the stage cache, then publishes."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import json
import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import ConfigError
from pipelines.recommend import cache as stage_cache
from pipelines.recommend import manifest as mf
from pipelines.recommend.config import RunConfig, section
from pipelines.recommend.engine import LOCAL_THREADS, Engine, LocalEngine, limit_malloc_arenas
from pipelines.recommend.report import write_report
from pipelines.recommend.stages import Plan, Stage, plan
from pipelines.recommend.tables import StageIO, part_paths
from pipelines.recommend.warehouse import refresh_views
from pipelines.store import (
    RunFolder,
    check_output_root,
    clean_stale,
    fault_point,
    new_run_id,
    output_lock,
    validate_run_id,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

# The source files each kind of stage runs (besides the runner's own): a cache key changes
# only when code its stage uses changes, so editing a generative model reuses every stage.
COMMON = ("features/columns.py", "features/vocab.py", "features/matrix.py",
          "features/errors.py", "pipelines/recommend/stages.py",
          "pipelines/recommend/tables.py", "pipelines/store.py")
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "ingest": ("pipelines/ingest.py", "features/resources.py"),
    "split": ("pipelines/evaluate.py",),
    "user_neighbours": ("models/neighbours.py", "pipelines/neighbours.py"),
    "item_neighbours": ("models/neighbours.py", "pipelines/neighbours.py"),
    "als": ("models/als.py", "pipelines/embeddings.py"),
    "candidates": ("pipelines/candidates.py", "features/neighbourhood.py", "models/ease.py"),
    "train_rows": ("features/ranking.py", "pipelines/ranking.py", "features/hashing.py"),
    "ranker": ("models/ranker.py", "pipelines/ranking.py", "features/ranking.py",
               "features/hashing.py"),
    "score": ("features/ranking.py", "pipelines/ranking.py", "models/ranker.py",
              "pipelines/diversify.py"),
    "diversify": ("pipelines/diversify.py",),
    "evaluate": ("pipelines/evaluate.py", "pipelines/offline.py", "pipelines/diversify.py",
                 "pipelines/tradeoff.py",
                 "pipelines/ranking.py", "features/ranking.py", "models/ranker.py",
                 "features/hashing.py"),
}


@functools.cache
def code_version(kind: str) -> str:
    """Hash of the source files a kind of stage runs."""
    digest = hashlib.sha256()
    for rel in (*COMMON, *STAGE_CODE[kind]):
        path = REPO / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def stage_key(p: Plan, stage: Stage, cfg: RunConfig, _memo: dict[str, str] | None = None
              ) -> str:
    """Content key of a stage's output: a Merkle hash over its config, code and upstream keys."""
    memo = {} if _memo is None else _memo
    if stage.name in memo:
        return memo[stage.name]
    digest = hashlib.sha256()
    digest.update(stage.kind.encode())
    digest.update(code_version(stage.kind).encode())
    digest.update(json.dumps({c: section(cfg, c) for c in stage.config}, sort_keys=True,
                             default=str).encode())
    if stage.kind == "ingest":
        digest.update(json.dumps(mf.fingerprint(cfg), sort_keys=True).encode())
    for up in p.upstream(stage):
        digest.update(stage_key(p, up, cfg, memo).encode())
    memo[stage.name] = digest.hexdigest()
    return memo[stage.name]


@dataclass(frozen=True)
class StageReport:
    """What one stage did: rows written per table, seconds taken, whether it was reused."""

    stage: str
    rows: dict[str, int]
    seconds: float
    cached: bool = False
    info: dict[str, Any] | None = None
    peak_rss_mb: float = 0.0
    """The process's peak resident memory when the stage ended (a stage that raises it is the
    one that set the run's peak; tasks on other processes report their own)."""


ON_THE_DRIVER = frozenset({"ingest"})
"""Stage kinds a cluster runs on the driver: ingest reads the source where the flow runs.
Every other stage runs whole as one task on a worker (its shard work fans out from there),
so the driver only schedules, and independent stages keep several workers busy."""


def on_one_worker(stage: Stage, folder: Path, cfg: RunConfig) -> bool:
    """Whether a cluster runs this stage as one task on a worker (not a distributed ranker).

    A ranker with `ranker.distributed_min_rows` training rows or more trains with
    `lightgbm.dask` from the driver: its tasks need every worker's thread at once.
    """
    if stage.kind == "ranker":
        rows = sum(pq.read_metadata(p).num_rows for name in stage.reads
                   for p in part_paths(folder, name) if p.exists())
        return rows < cfg.ranker.distributed_min_rows
    return stage.kind not in ON_THE_DRIVER


def execute(p: Plan, stage: Stage, folder: Path, cfg: RunConfig, engine: Engine | None = None,
            key: str | None = None) -> StageReport:
    """Run one stage over the run folder, or restore it from a verified cache entry.

    On an engine that runs whole stages remotely (Dask), the stage goes to one worker as a
    single task, cache check included, and fans its shards out from there.
    """
    run_whole = getattr(engine, "run_whole", None)
    if run_whole is not None and on_one_worker(stage, folder, cfg):
        # The key from the driver's code (the driver prunes the cache by its own keys), and
        # the output root as the driver sees it (a worker has its own working directory).
        here = cfg.model_copy(update={"output": cfg.output.model_copy(
            update={"root": cfg.output.root.resolve()})})
        report: StageReport = run_whole(
            functools.partial(execute, key=key or stage_key(p, stage, cfg)),
            p, stage, folder.resolve(), here)
        log.info("stage %s: %s on a worker in %.2f s%s", stage.name, report.rows,
                 report.seconds, " (cache)" if report.cached else "")
        return report
    start = time.perf_counter()
    key = key or stage_key(p, stage, cfg)
    entry = stage_cache.entry(cfg.output.root, stage.name, key)
    local = engine is None or isinstance(engine, LocalEngine)
    if cfg.output.cache and (hit := stage_cache.restore(entry, folder)) is not None:
        log.info("stage %s: unchanged inputs, reused cache %s", stage.name, key[:12])
        if local:
            mf.combine_early(folder, p, stage.writes)
        return StageReport(stage.name, hit["rows"], round(time.perf_counter() - start, 3),
                           cached=True, info=hit["info"], peak_rss_mb=peak_rss_mb())
    log.info("stage %s: started on %s", stage.name, input_sizes(folder, stage) or "no tables")
    io = StageIO(folder, engine or LocalEngine(LOCAL_THREADS))
    info = stage.fn(io, cfg)
    release_free_memory()
    fault_point(stage.name)  # crash tests kill the process here, after the stage's files
    if missing := [t for t in stage.writes if not io.exists(t) and t not in io.files]:
        raise RuntimeError(f"stage {stage.name} did not write {missing}")
    seconds = time.perf_counter() - start
    if cfg.output.cache:
        stage_cache.store(entry, folder, io.files, io.rows, info)
    if local:
        mf.combine_early(folder, p, stage.writes)
    log.info("stage %s: %s in %.2f s", stage.name, io.rows, seconds)
    return StageReport(stage.name, io.rows, round(seconds, 3), info=info,
                       peak_rss_mb=peak_rss_mb())


def release_free_memory() -> None:
    """Hand the memory a finished stage freed back to the system.

    Stages run one after another in one process; without this, glibc and Arrow keep freed
    pages and each stage starts from the previous stages' high-water mark.
    """
    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def young_heap_gc() -> Iterator[None]:
    """Within: a collection scans only the objects made since entry (the run's own).

    The modules a night imports (Prefect, torch, polars, ...) hold millions of objects; a
    full collection over them after every stage cost more than the stages on small data.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def input_sizes(folder: Path, stage: Stage) -> dict[str, int]:
    """Rows of each input table of a stage, from the Parquet footers (for the log)."""
    out = {}
    for name in stage.reads:
        if name.endswith(".json"):
            continue
        out[name] = sum(pq.read_metadata(p).num_rows for p in part_paths(folder, name)
                        if p.exists())
    return out


@dataclass
class RunResult:
    """A published run: where it is and what each stage did."""

    run_id: str
    path: Path
    reports: list[StageReport] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


Call = Callable[[Stage, RunFolder], StageReport]
"""Runs one stage (directly, or as an orchestrator's task)."""
Runner = Callable[[Plan, RunFolder], list[StageReport]]
"""Runs every stage of a plan, in dependency order, and returns their reports in plan order."""


def stages_at_once(cfg: RunConfig, engine: Engine | None = None) -> int:
    """Stages at once: `engine.concurrent_stages` on a cluster, else LOCAL_THREADS.

    The cluster is the configured one, or `engine` when a caller passes its own.
    """
    on_cluster = cfg.engine.kind == "dask" or hasattr(engine, "run_whole")
    return cfg.engine.concurrent_stages if on_cluster else LOCAL_THREADS


def chain_lengths(p: Plan) -> dict[str, int]:
    """Per stage, the most stages on a path from it to the end of the night (itself included)."""
    below: dict[str, list[str]] = {s.name: [] for s in p.stages}
    for s in p.stages:
        for u in p.upstream(s):
            below[u.name].append(s.name)
    out: dict[str, int] = {}
    for s in reversed(p.stages):  # a plan lists every stage after its inputs' stages
        out[s.name] = 1 + max((out[d] for d in below[s.name]), default=0)
    return out


def run_ready(p: Plan, start: Callable[[Stage], Future[Any]], at_once: int,
              finish: Callable[[Stage, Future[Any]], None]) -> None:
    """Start each stage once its upstream stages are done, at most `at_once` at a time.

    Among the ready stages the one with the longest chain after it starts first (the deepest
    cut-off leads to the evaluation ranker, the night's longest path; ties keep the plan's
    order), so no thread waits on a stage queued behind it. `finish(stage, future)` is called
    as each one ends and raises its failure: nothing new starts, the running stages finish
    (no thread writes to the staging folder once this returns), and the failure is raised.
    """
    depth = chain_lengths(p)
    waiting = sorted(p.stages, key=lambda s: -depth[s.name])
    done: set[str] = set()
    running: dict[Future[Any], Stage] = {}
    try:
        while waiting or running:
            while len(running) < at_once:
                s = next((s for s in waiting
                          if all(u.name in done for u in p.upstream(s))), None)
                if s is None:
                    break
                waiting.remove(s)
                running[start(s)] = s
            if not running:  # a plan is ordered, so this is a bug, not a wait
                raise RuntimeError(f"stages {[s.name for s in waiting]} can never start")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                finish(stage, future)
                done.add(stage.name)
    except BaseException:
        wait(running)
        for future, stage in running.items():
            try:
                finish(stage, future)
            except BaseException as exc:  # noqa: BLE001 - the first failure is raised below
                log.error("stage %s also failed: %s", stage.name, exc)
        raise


def concurrent(call: Call, at_once: int) -> Runner:
    """Run the stages in threads of this process through `call`, `at_once` side by side.

    For a cluster engine: the driver's threads only wait on the workers, so two independent
    stages (the cut-offs' ALS fits, the two rankers) keep two workers busy. The first failure
    stops new stages, waits for the running ones, and is raised.
    """
    def run(p: Plan, folder: RunFolder) -> list[StageReport]:
        done: dict[str, StageReport] = {}

        def finish(stage: Stage, future: Future[Any]) -> None:
            done[stage.name] = future.result()  # raises the stage's failure

        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="stage") as pool:
            run_ready(p, lambda s: pool.submit(call, s, folder), at_once, finish)
        return [done[s.name] for s in p.stages]
    return run


def run_nightly(cfg: RunConfig, run_id: str | None = None, *, evaluate_only: bool = False,
                engine: Engine | None = None) -> RunResult:
    """Run the stages, LOCAL_THREADS at once, and publish, without Prefect (tests, scripts).

    With `engine.kind = "dask"` and no `engine` given, shard work goes to the configured
    cluster (a LocalCluster started and stopped here when no address is set).
    """
    client = None
    if engine is None and cfg.engine.kind == "dask":
        from pipelines.recommend.dask_engine import DaskEngine, connect

        client = connect(cfg.engine)
        engine = DaskEngine(client)

    p = plan(cfg, evaluate_only=evaluate_only)

    def call(stage: Stage, run: RunFolder) -> StageReport:
        return execute(p, stage, run.staging, cfg, engine)
    runner = concurrent(call, stages_at_once(cfg, engine))
    try:
        return run_with(cfg, run_id, runner, evaluate_only=evaluate_only, engine=engine)
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


def run_with(cfg: RunConfig, run_id: str | None, runner: Runner, *,
             evaluate_only: bool = False, engine: Engine | None = None) -> RunResult:
    """Lock the output root, run the plan through `runner`, verify, publish, prune.

    Any failure discards the staging folder, so nothing is published and `latest` keeps
    pointing at the last good run. `evaluate_only` runs ingest and the evaluation only, and
    publishes without moving `latest`.
    """
    root = cfg.output.root
    started = datetime.now(UTC)
    limit_malloc_arenas()
    if run_id is not None:
        validate_run_id(run_id)
    check_output_root(root)
    with output_lock(root, wait_s=cfg.output.lock_wait_s), young_heap_gc():
        clean_stale(root)
        # Absolute: shard and whole-stage tasks run on workers with their own working dirs.
        run = RunFolder(root.resolve(), run_id or new_run_id(started))
        if run.final.exists():
            raise ConfigError(f"run id {run.run_id!r} is already used by {run.final}; choose "
                              "another --run-id (or leave it out for a fresh one)")
        run.create()
        p = plan(cfg, evaluate_only=evaluate_only)
        try:
            reports = runner(p, run)
            manifest = mf.manifest_for(run, p, cfg, reports, started)
            mf.finalise(run, p, manifest, engine)
            if not evaluate_only:
                write_report(run.staging, manifest, cfg.diversify.n)
            path = run.publish(manifest, update_latest=not evaluate_only)
        except BaseException:
            mf.settle(run.staging)  # no background write may land in a folder being removed
            run.discard()
            raise
        mf.prune_runs(root, cfg.output.keep_runs)
        refresh_views(root)
        if not evaluate_only:  # an evaluation-only run keeps the nightly's cache
            memo: dict[str, str] = {}
            stage_cache.prune(root, {f"{s.name}/{stage_key(p, s, cfg, memo)}"
                                     for s in p.stages})
    return RunResult(run.run_id, path, reports, manifest)
