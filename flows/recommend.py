"""The `nightly-recommendations` Prefect flow: one task per planned stage, with real edges."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from prefect import Flow, flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from features.errors import RecsysError
from pipelines.recommend.config import RunConfig
from pipelines.recommend.engine import LOCAL_THREADS
from pipelines.recommend.runner import (
    RunResult,
    StageReport,
    execute,
    run_ready,
    run_with,
    stages_at_once,
)
from pipelines.recommend.stages import Plan, Stage, plan
from pipelines.store import RunFolder

if TYPE_CHECKING:
    from pipelines.recommend.dask_engine import DaskEngine


def transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only operating-system I/O faults, never the product's own data or config errors."""
    try:
        state.result()
    except RecsysError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is a bug: do not retry it
        return False
    return False


@task(name="stage", cache_policy=NO_CACHE, tags=["cpu"])
def stage_task(name: str, staging: Path, cfg: RunConfig, evaluate_only: bool = False
               ) -> StageReport:
    """Run one stage of the nightly plan over the run's staging folder (or reuse its cache)."""
    p = plan(cfg, evaluate_only=evaluate_only)
    return execute(p, p.stage(name), staging, cfg, cluster_engine(cfg))


def cluster_engine(cfg: RunConfig) -> DaskEngine | None:
    """With engine.kind = "dask", the run's client (shared by the task threads); else None."""
    if cfg.engine.kind != "dask":
        return None
    from distributed import default_client

    from pipelines.recommend.dask_engine import DaskEngine

    return DaskEngine(default_client())  # the flow's client, shared by the task threads


def _submit_all(p: Plan, run: RunFolder, cfg: RunConfig, evaluate_only: bool
                ) -> list[StageReport]:
    """Submit each stage once its upstream stages are done, with them as `wait_for`.

    The UI shows the graph from the `wait_for` edges. At most as many stages run at once as
    the task runner has threads, so no thread waits on a stage queued behind it.
    """
    futures: dict[str, PrefectFuture[StageReport]] = {}
    progress = create_progress_artifact(progress=0.0, key="nightly-progress",
                                        description=f"Stages of run {run.run_id} done")

    def start(s: Stage) -> Future[Any]:
        options: dict[str, Any] = {"name": s.name, "task_run_name": s.name,
                                   "timeout_seconds": s.timeout_s}
        if s.kind == "ingest":
            options |= {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": transient_io,
                        "tags": ["cpu", "io"]}
        future = stage_task.with_options(**options).submit(
            s.name, run.staging, cfg, evaluate_only,
            wait_for=[futures[u.name] for u in p.upstream(s)])
        futures[s.name] = future
        return future.wrapped_future  # type: ignore[attr-defined]

    finished: list[str] = []

    def finish(s: Stage, _: Future[Any]) -> None:
        futures[s.name].result()  # raises the stage's failure
        finished.append(s.name)
        update_progress_artifact(progress, progress=100.0 * len(finished) / len(p.stages))

    run_ready(p, start, stages_at_once(cfg), finish)
    return [futures[s.name].result() for s in p.stages]


def publish_artifacts(result: RunResult) -> None:
    """Stage table, evaluation, ingest report and where the run is, for the Prefect UI."""
    tables = sorted({t for r in result.reports for t in r.rows})
    rows = [{"stage": r.stage, "seconds": r.seconds, "peak_rss_mb": r.peak_rss_mb,
             "cached": r.cached,
             **{t: r.rows.get(t, "") for t in tables}} for r in result.reports]
    create_table_artifact(key="nightly-stages", table=rows,
                          description=f"Stages of run {result.run_id}")
    evaluation = result.path / "evaluation.parquet"
    if evaluation.exists() and pq.read_metadata(evaluation).num_rows:
        metrics = pq.read_table(evaluation).to_pylist()
        create_table_artifact(
            key="offline-evaluation",
            table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                   for r in metrics],
            description="NDCG@10, Recall@20, coverage and author diversity per approach")
    m = result.manifest
    ingest = m.get("ingest") or {}
    ev = m.get("evaluation") or {}
    lines = [f"# Run {result.run_id}", "", "Published to:", "", "```", str(result.path.resolve()),
             "```", "",
             f"Recommendations: {m['rows'].get('recommendations', 0):,} rows, scored by "
             f"**{m.get('scored_by')}**; rejected input rows: {m.get('rejected_rows', 0):,}.", ""]
    if ev.get("status") == "skipped":
        lines += [f"Offline evaluation skipped: {ev.get('reason')}", ""]
    if ingest:
        lines += ["## Ingest", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(ingest.items())]
    create_markdown_artifact(key="nightly-output", markdown="\n".join(lines) + "\n",
                             description="Where tonight's recommendations are")
    report = result.path / "report.md"
    if report.exists():
        create_markdown_artifact(key="nightly-report", markdown=report.read_text(),
                                 description="Evaluation, coverage and stage timings "
                                             "(report.html in the run folder has the figures)")


@contextlib.contextmanager
def _cluster(cfg: RunConfig) -> Iterator[None]:
    """With engine.kind = "dask", a Dask client for the run (the cluster is Dask's own)."""
    if cfg.engine.kind != "dask":
        yield
        return
    from pipelines.recommend.dask_engine import connect

    client = connect(cfg.engine)
    cluster = getattr(client, "cluster", None) if cfg.engine.address is None else None
    try:
        yield
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _config(config_path: Path | None, preset: str | None, data: Path | None,
            output: Path | None, no_cache: bool) -> RunConfig:
    from flows.cli import load_config

    return load_config(config_path, preset, data, output, no_cache)


def _run(cfg: RunConfig, run_id: str | None, evaluate_only: bool) -> dict[str, object]:
    """Run the plan as tasks (on the configured cluster), publish, then the artifacts."""
    with _cluster(cfg):
        result = run_with(cfg, run_id, lambda p, run: _submit_all(p, run, cfg, evaluate_only),
                          evaluate_only=evaluate_only, engine=cluster_engine(cfg))
    publish_artifacts(result)
    return {"run_id": result.run_id, "path": str(result.path),
            "stages": [r.__dict__ for r in result.reports]}


def with_stage_threads(fl: Flow[..., Any], cfg: RunConfig) -> Flow[..., Any]:
    """The flow with as many task threads as the config runs stages at once."""
    return fl.with_options(task_runner=ThreadPoolTaskRunner(max_workers=stages_at_once(cfg)))


def _run_name() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.parameters.get("run_id") or "nightly-{date}".format(
        date=flow_run.scheduled_start_time.strftime("%Y%m%dT%H%M%SZ")))


@flow(name="nightly-recommendations", log_prints=True, flow_run_name=_run_name,
      task_runner=ThreadPoolTaskRunner(max_workers=LOCAL_THREADS))
def nightly_recommendations(config_path: Path | None = None, run_id: str | None = None,
                            config: RunConfig | None = None, preset: str | None = None,
                            data: Path | None = None, output: Path | None = None,
                            no_cache: bool = False) -> dict[str, object]:
    """Raw interactions -> neighbourhoods + ALS per cut-off -> candidates -> rank -> diversity.

    config_path: a TOML config (default: the embedded data and built-in settings).
    run_id: the published folder's name under runs/ (default: a time-stamped id).
    config: an already built RunConfig (instead of config_path).
    preset: a public format (movielens-1m, movielens-latest, movielens-100k, lastfm); needs data.
    data: the folder (or ratings file) of the preset's data set.
    output: the output root (runs/, latest, cache/ and warehouse.duckdb go there).
    no_cache: recompute every stage instead of reusing unchanged results.
    """
    return _run(config or _config(config_path, preset, data, output, no_cache), run_id, False)


@flow(name="offline-evaluation", log_prints=True, flow_run_name=_run_name,
      task_runner=ThreadPoolTaskRunner(max_workers=LOCAL_THREADS))
def offline_evaluation(config: RunConfig | None = None, run_id: str | None = None,
                       config_path: Path | None = None, preset: str | None = None,
                       data: Path | None = None, output: Path | None = None,
                       no_cache: bool = False) -> dict[str, object]:
    """Ingest, then compare every approach under the fixed hold-out protocol.

    Parameters as for nightly-recommendations; the run is published without moving latest.
    """
    return _run(config or _config(config_path, preset, data, output, no_cache), run_id, True)
