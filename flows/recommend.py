"""The `nightly-recommendations` Prefect flow: one task per stage, thin over pipelines.nightly."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipelines import nightly
from pipelines.nightly import RunConfig, RunResult, Stage, StageReport
from pipelines.store import RunFolder


@task(name="ingest", retries=2, retry_delay_seconds=5, tags=["cpu", "io"])
def ingest_task(run: RunFolder, cfg: RunConfig) -> StageReport:
    """Read and validate the source files into interactions, items and rejected (retried: I/O)."""
    return nightly.execute(nightly.INGEST, run, cfg)


@task(name="stage", tags=["cpu"])
def stage_task(stage: Stage, run: RunFolder, cfg: RunConfig) -> StageReport:
    """Run one pure stage over the run folder's tables."""
    return nightly.execute(stage, run, cfg)


def _call(stage: Stage, run: RunFolder, cfg: RunConfig) -> StageReport:
    if stage is nightly.INGEST:
        return ingest_task(run, cfg)
    return stage_task.with_options(name=stage.name)(stage, run, cfg)


def _parallel(stages: list[Stage], run: RunFolder, cfg: RunConfig) -> list[StageReport]:
    futures = [stage_task.with_options(name=s.name).submit(s, run, cfg) for s in stages]
    return [f.result() for f in futures]


def publish_artifacts(result: RunResult) -> None:
    """Stage table (rows and seconds) and a link to the published folder, for the Prefect UI."""
    rows = [{"stage": r.stage, "seconds": r.seconds,
             "rows": ", ".join(f"{k}={v}" for k, v in r.rows.items())} for r in result.reports]
    create_table_artifact(key="nightly-stages", table=rows,
                          description=f"Stages of run {result.run_id}")
    evaluation = result.path / "evaluation.parquet"
    if evaluation.exists():
        metrics = pq.read_table(evaluation).to_pylist()
        create_table_artifact(
            key="offline-evaluation",
            table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                   for r in metrics],
            description="NDCG@10, Recall@20, coverage and author diversity per approach")
    create_markdown_artifact(
        key="nightly-output",
        markdown=(f"# Run {result.run_id}\n\nPublished to `{result.path}` "
                  f"([folder]({result.path.resolve().as_uri()})).\n\n"
                  f"Recommendations: {result.manifest['rows'].get('recommendations', 0)} rows; "
                  f"rejected input rows: {result.manifest.get('rejected_rows', 0)}.\n"),
        description="Where tonight's recommendations are")


@flow(name="nightly-recommendations", log_prints=True)
def nightly_recommendations(config_path: Path | None = None, run_id: str | None = None,
                            config: RunConfig | None = None) -> dict[str, object]:
    """Raw interactions -> neighbourhoods + ALS -> candidates -> ranking -> diversity -> Parquet."""
    cfg = config or (RunConfig.from_toml(config_path) if config_path else RunConfig())
    result = nightly.run_with(
        cfg, run_id,
        lambda stage, run: _call(stage, run, cfg),
        lambda stages, run: _parallel(stages, run, cfg),
    )
    publish_artifacts(result)
    return {"run_id": result.run_id, "path": str(result.path),
            "stages": [r.__dict__ for r in result.reports]}


@flow(name="offline-evaluation", log_prints=True)
def offline_evaluation(config: RunConfig | None = None, run_id: str | None = None
                       ) -> dict[str, object]:
    """Ingest, then compare every approach under the fixed hold-out protocol."""
    cfg = config or RunConfig()
    result = nightly.run_with(cfg, run_id, lambda stage, run: _call(stage, run, cfg),
                              evaluate_only=True)
    publish_artifacts(result)
    return {"run_id": result.run_id, "path": str(result.path),
            "stages": [r.__dict__ for r in result.reports]}
