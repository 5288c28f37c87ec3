"""The `recsys` command line without a Prefect server: help, choices, flags and exit codes."""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_common import EXIT_FAILED, EXIT_USAGE, friendly_errors
from pipelines.store import latest_run
from tests.conftest import tiny_config_dict, to_toml

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "240", "TERM": "dumb"}  # no wrapping inside a bracketed word
runner = CliRunner()


def tiny_toml(folder: Path, **overrides: Any) -> Path:
    raw: dict[str, Any] = tiny_config_dict(folder) | overrides
    path = folder / "tiny.toml"
    path.write_text(to_toml(raw))
    return path


def unreachable_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, group)]
    for name, cmd in getattr(group, "commands", {}).items():
        out += commands(cmd, (*path, name))
    return out


def test_short_help_flag_and_version() -> None:
    for args in (["-h"], ["run", "-h"], ["train", "vae", "-h"], ["style", "-h"],
                 ["audio", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.match(r"recsys \S+", result.output), result.output


def test_help_keeps_bracketed_words() -> None:
    """Rich would swallow `[vae]` or `[source]` as markup; every bracket in a help text shows."""
    checked = 0
    for path, cmd in commands(typer.main.get_command(app)):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        words = {w.replace("\\[", "[") for t in texts for w in re.findall(r"\\?\[[^\]\s]+\]", t)}
        if not words:
            continue
        shown = runner.invoke(app, [*path, "--help"], env=WIDE).output
        for word in words:
            assert word in shown, (path, word)
            checked += 1
    assert checked >= 1  # at least `train vae --config` mentions [vae]


@pytest.mark.parametrize("args", [
    ["run", "--engine", "spark"],
    ["evaluate", "--engine", "spark"],
    ["train", "vae", "--device", "tpu"],
    ["run", "-q", "-v"],
])
def test_bad_choices_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output


def test_no_cache_and_output_are_applied_to_the_config(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "night.toml").write_text("[diversify]\nn = 7\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show-config", "-c", "configs/night.toml", "-o", "out",
                                 "--no-cache"])
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["diversify"]["n"] == 7
    assert cfg["output"]["cache"] is False
    assert Path(cfg["output"]["root"]) == tmp_path / "out"  # the working dir, not configs/
    default = json.loads(runner.invoke(app, ["show-config"]).output)
    assert default["output"]["cache"] is True


def test_local_run_logs_each_stage_at_info_and_quiet_hides_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_toml(tmp_path, ranking="fusion", evaluation={"enabled": False})
    with caplog.at_level(logging.DEBUG, logger="pipelines"):  # not numba's debug flood
        result = runner.invoke(app, ["run", "-e", "local", "-c", str(config), "--run-id", "a"])
    assert result.exit_code == 0, result.output
    stage_lines = [r for r in caplog.records
                   if r.name.startswith("pipelines") and r.levelno == logging.INFO]
    assert any("ingest" in r.getMessage() for r in stage_lines), caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pipelines"):  # not numba's debug flood
        result = runner.invoke(app, ["-q", "run", "-e", "local", "-c", str(config),
                                     "--run-id", "b", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records
                if r.name.startswith("pipelines") and r.levelno < logging.WARNING]
    assert "(unchanged: reused)" not in result.output  # --no-cache recomputed every stage
    from flows.settings import Verbosity, configure_process

    configure_process(Verbosity.NORMAL)  # back to the default for later tests


def test_unreachable_prefect_api_is_a_clean_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = unreachable_url()
    monkeypatch.setenv("PREFECT_API_URL", url)
    config = tiny_toml(tmp_path)
    for args in (["run", "-c", str(config)], ["serve"]):
        result = runner.invoke(app, args)
        assert result.exit_code == EXIT_FAILED, result.output
        assert url in result.output and "prefect server start" in result.output
        assert "Traceback" not in result.output
    assert "--engine local" in runner.invoke(app, ["run", "-c", str(config)]).output
    assert latest_run(tmp_path / "out") is None


def test_output_that_is_a_file_names_the_path(tmp_path: Path) -> None:
    config = tiny_toml(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    for output in (blocker, blocker / "sub"):
        result = runner.invoke(app, ["run", "-e", "local", "-c", str(config),
                                     "-o", str(output)])
        assert result.exit_code in (EXIT_FAILED, EXIT_USAGE), result.output
        assert str(blocker) in result.output and "Traceback" not in result.output


def test_friendly_errors_exit_codes() -> None:
    """Product errors exit 2, user-fixable OS faults 1 with the path, bugs keep a traceback."""
    from features.errors import DataError

    def raising(exc: BaseException) -> Any:
        @friendly_errors
        def command() -> None:
            raise exc
        return command

    with pytest.raises(SystemExit) as stop:
        raising(DataError("ratings.csv: column 'user' missing"))()
    assert stop.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as stop:
        raising(OSError(errno.ENOSPC, "No space left on device", "/data/runs/x.parquet"))()
    assert stop.value.code == EXIT_FAILED
    with pytest.raises(SystemExit) as stop:
        raising(FileNotFoundError("content image a.jpg does not exist; check --content"))()
    assert stop.value.code == EXIT_USAGE  # our own check, phrased as an OSError
    with pytest.raises(ValueError):  # a bug: the traceback stays
        raising(ValueError("unexpected"))()
    with pytest.raises(OSError):  # an OS fault nobody can fix by changing the command
        raising(OSError(errno.EIO, "Input/output error", "/dev/sda"))()


def test_disk_full_message_names_path_and_fix(capsys: pytest.CaptureFixture[str]) -> None:
    @friendly_errors
    def command() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/x.parquet")

    with pytest.raises(SystemExit):
        command()
    err = capsys.readouterr().err
    assert "/data/runs/x.parquet" in err and "free space" in err


@pytest.mark.slow  # imports every flow (torch)
def test_deployments_are_named_after_their_flows_and_match_prefect_yaml(tmp_path: Path) -> None:
    import importlib

    from flows.serve import DeploymentInputs, deployments, parameters_for

    served = deployments()
    names = [d.name for d in served]
    assert len(set(names)) == len(names)
    assert all(d.name == d.flow_name for d in served), [(d.name, d.flow_name) for d in served]
    assert {"style-optimise", "style-train", "style-apply"} <= set(names)
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert sorted(d["name"] for d in doc["deployments"]) == sorted(names)
    for entry in doc["deployments"]:
        file, attr = entry["entrypoint"].split(":")
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        assert getattr(module, attr).name == entry["name"]
    assert all(d.description for d in served)  # the flows' docstrings, shown in the UI

    inputs = DeploymentInputs(output=tmp_path / "out")
    by_name = {d.name: d for d in served}
    import flows.generative
    import flows.style

    assert parameters_for(flows.generative.train_vae, inputs) == {"output": str(tmp_path / "out")}
    assert parameters_for(flows.style.style_train, inputs) == {"root": str(tmp_path / "out")}
    assert by_name["nightly-recommendations"].schedules


def test_python_dash_m_flows_runs_the_cli() -> None:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "flows", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("recsys "), done.stderr


def test_evaluate_locally_writes_the_report(tmp_path: Path) -> None:
    config = tiny_toml(tmp_path, ranking="fusion")
    result = runner.invoke(app, ["evaluate", "-e", "local", "-c", str(config), "--run-id", "ev",
                                 "--no-cache"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "runs" / "ev" / "evaluation.md").is_file()
    assert "written to" in result.output
