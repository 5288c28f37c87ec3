"""One real Prefect run of the nightly flow on tiny data, and the CLI's exit codes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from pipelines.nightly import RunConfig
from pipelines.recommend.stages import plan
from pipelines.store import latest_run
from tests.conftest import tiny_config_dict


@pytest.mark.flow
@pytest.mark.slow
def test_flow_runs_every_stage_and_publishes(prefect_harness: None, tmp_path: Path) -> None:
    from flows.recommend import nightly_recommendations

    cfg = RunConfig.from_dict(tiny_config_dict(tmp_path))
    summary = nightly_recommendations(config=cfg, run_id="flow-run")
    stages = [s["stage"] for s in summary["stages"]]  # type: ignore[index, union-attr]
    assert stages == [s.name for s in plan(cfg).stages]
    assert {"ranker", "score", "diversify", "ranker@eval", "evaluate"} <= set(stages)
    published = latest_run(tmp_path / "out")
    assert published is not None and published.name == "flow-run"
    assert pq.read_table(published / "recommendations.parquet").num_rows == 30 * 5


@pytest.mark.flow
@pytest.mark.slow
def test_flow_on_a_dask_cluster_publishes_what_one_process_does(prefect_harness: None,
                                                                 tmp_path: Path) -> None:
    from flows.recommend import nightly_recommendations, with_stage_threads
    from pipelines.nightly import run_nightly

    raw = tiny_config_dict(tmp_path)
    raw["shards"] = {"users": 7}
    local = run_nightly(RunConfig.from_dict({**raw, "output": {"root": str(tmp_path / "l")}}))
    # The flow starts (and stops) its own 2-worker LocalCluster; stages run as Prefect tasks,
    # whole stages and shards on the workers.
    cfg = RunConfig.from_dict({**raw, "output": {"root": str(tmp_path / "d")},
                               "engine": {"kind": "dask", "n_workers": 2}})
    summary = with_stage_threads(nightly_recommendations, cfg)(config=cfg, run_id="on-dask")
    assert [s["stage"] for s in summary["stages"]] == [  # type: ignore[index, union-attr]
        s.name for s in plan(cfg).stages]
    published = latest_run(tmp_path / "d")
    assert published is not None and published.name == "on-dask"
    for name in ("candidates", "scored", "recommendations", "evaluation"):
        a = pq.read_table(local.path / f"{name}.parquet").drop_columns(["run_id"])
        b = pq.read_table(published / f"{name}.parquet").drop_columns(["run_id"])
        assert a.equals(b), name


def command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the CLI, as argument paths."""
    out = [prefix]
    if hasattr(group, "commands"):
        for name, cmd in group.commands.items():
            out += command_paths(cmd, (*prefix, name))
    return out


def test_cli_help_on_every_command() -> None:
    runner = CliRunner()
    paths = command_paths(typer.main.get_command(app))
    assert ("run",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_cli_bad_input_exits_non_zero_and_publishes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "cfg.toml"
    bad.write_text("[source]\npath = 'missing.csv'\nitems = []\n")
    result = CliRunner().invoke(app, ["run", "--engine", "local", "--config", str(bad),
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "missing.csv" in result.output and "does not exist" in result.output
    assert latest_run(tmp_path / "out") is None


def test_cli_rejects_config_typos(tmp_path: Path) -> None:
    bad = tmp_path / "cfg.toml"
    bad.write_text("[diversify]\nmax_per_autor = 3\n")
    result = CliRunner().invoke(app, ["show-config", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'diversify.max_per_autor'" in result.output


@pytest.mark.flow
@pytest.mark.slow
def test_bad_input_through_the_default_engine_is_not_retried(prefect_harness: None,
                                                            tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from features.errors import DataError
    from flows.recommend import nightly_recommendations

    raw = tiny_config_dict(tmp_path)
    (tmp_path / "empty.csv").write_text("user,item,rating,ts\n")
    raw["source"]["path"] = str(tmp_path / "empty.csv")  # type: ignore[index]
    with pytest.raises(DataError, match="no data rows"):
        nightly_recommendations(config=RunConfig.from_dict(raw), run_id="bad-input")
    assert latest_run(tmp_path / "out") is None
    with get_client(sync_client=True) as client:
        flow_run = next(r for r in client.read_flow_runs() if r.name == "bad-input")
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))
    ingest = [t for t in tasks if t.name == "ingest"]
    assert len(ingest) == 1 and ingest[0].run_count == 1  # a DataError is never retried
