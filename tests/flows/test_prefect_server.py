"""The nightly flow against a real `prefect server start`: run state, stage tasks, artifacts.

Starts a private Prefect server (its own PREFECT_HOME, SQLite, a free port), runs
`python -m flows run --config tiny.toml` with PREFECT_API_URL pointing at it, then reads the
flow run, its task runs and its artifacts back through the Prefect client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.nightly import RunConfig, run_nightly
from pipelines.store import latest_run
from tests.conftest import published as published_table
from tests.conftest import tiny_config_dict, to_toml

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0  # the first start creates and migrates the database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path) -> dict[str, str]:
    """The environment of a private server and its clients: own PREFECT_HOME, SQLite there."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE",
                        "PREFECT_API_DATABASE_CONNECTION_URL",
                        "PREFECT_SERVER_DATABASE_CONNECTION_URL")
           and not k.startswith("RECSYS_FAULT")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Poll `<url>/health` until it answers 200; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM the process group (server plus its children), wait; SIGKILL if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real `prefect server start` on a free port; yields (api url, client environment)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = server_env(home)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api, proc, log, STARTUP_TIMEOUT_S)
        assert (home / "prefect.db").is_file()  # SQLite in the private PREFECT_HOME
        yield api, env | {"PREFECT_API_URL": api}
    finally:
        code = stop(proc)
        assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log.read_text()[-3000:]


async def read_back(flow_run_name: str | None = None) -> dict[str, Any]:
    """The nightly flow run(s), their task runs and artifacts, from the API in settings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(
            name=FlowFilterName(any_=["nightly-recommendations"])))
        out: dict[str, Any] = {"runs": runs, "tasks": {}, "artifacts": {}, "logs": {}}
        for run in runs:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            out["tasks"][run.id] = tasks
            out["logs"][run.id] = await client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            out["artifacts"][run.id] = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                    any_=[run.id])))
        return out


def read_back_settled(api: str, expected_tasks: int, timeout: float = 60.0) -> dict[str, Any]:
    """Read back until every task run's final state has been recorded (events are async)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api}):
        while True:
            got = asyncio.run(read_back())
            tasks = [t for ts in got["tasks"].values() for t in ts]
            settled = len(tasks) >= expected_tasks and all(
                t.state is not None and t.state.is_final() for t in tasks)
            if settled or time.monotonic() > deadline:
                return got
            time.sleep(0.5)


@pytest.mark.flow
@pytest.mark.slow
def test_nightly_flow_against_a_real_prefect_server(
        prefect_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    api, env = prefect_server
    raw: dict[str, Any] = tiny_config_dict(tmp_path)
    raw["ranking"] = "fusion"  # evaluation stays on: its task and artifact are checked too
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(raw))
    root = tmp_path / "out"

    done = subprocess.run(
        [sys.executable, "-m", "flows", "run", "--config", str(config), "--run-id", "served"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published run served" in done.stdout
    published = latest_run(root)
    assert published is not None and published.name == "served"

    stages = list(json.loads((published / "manifest.json").read_text())["seconds"])
    assert "ingest" in stages and "diversify" in stages
    got = read_back_settled(api, expected_tasks=len(stages))
    (run,) = got["runs"]
    assert run.name and run.state is not None
    assert run.state.type.value == "COMPLETED", run.state
    tasks = got["tasks"][run.id]
    names = sorted(t.name for t in tasks)
    assert names == sorted(stages)
    # The product's own log lines (INFO, loggers pipelines.*) reach the flow run's logs.
    logged = [(entry.name, entry.message) for entry in got["logs"][run.id]]
    assert any(name.startswith("pipelines") and "ingest" in message
               for name, message in logged), logged[:20]
    assert all(t.state is not None and t.state.type.value == "COMPLETED" for t in tasks), [
        (t.name, t.state) for t in tasks]
    artifacts = {a.key: a for a in got["artifacts"][run.id]}
    assert set(artifacts) >= {"nightly-stages", "nightly-output", "offline-evaluation"}
    stages_table = artifacts["nightly-stages"].data
    rows = json.loads(stages_table) if isinstance(stages_table, str) else stages_table
    assert {r["stage"] for r in rows} == set(stages)
    assert "served" in str(artifacts["nightly-output"].data)
    models = [r["model"] for r in pq.read_table(published / "evaluation.parquet").to_pylist()]
    assert "fusion" in str(artifacts["offline-evaluation"].data) and "fusion" in models

    # A rerun of the same night on the same root recomputes nothing (content-keyed cache).
    again = run_nightly(RunConfig.from_toml(config), run_id="served-again")
    assert [r.stage for r in again.reports if not r.cached] == []
    assert published_table(again.path, "recommendations").equals(
        published_table(published, "recommendations"))


# --- The temporary server `recsys run` starts when PREFECT_API_URL is not set -----------------

READY = re.compile(r"temporary Prefect server ready on (\S+) \(pid (\d+)\)")


@pytest.fixture(scope="module")
def temp_server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A client environment with no PREFECT_API_URL and a PREFECT_HOME shared by these tests."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = server_env(home)
    env.pop("PREFECT_SERVER_ANALYTICS_ENABLED")  # recsys must switch telemetry off itself
    return env


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def wait_dead(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.flow
@pytest.mark.slow
def test_first_run_without_api_url_is_clean(temp_server_env: dict[str, str],
                                            tmp_path: Path) -> None:
    """No traceback and no ERROR line; our stage logs show; the server is gone afterwards."""
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config_dict(tmp_path)))
    done = subprocess.run([sys.executable, "-m", "flows", "run", "--config", str(config)],
                          cwd=tmp_path, env=temp_server_env, capture_output=True, text=True,
                          timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Traceback" not in out and "ERROR" not in out, out
    assert re.search(r"pipelines\S* - stage ingest", out), out  # INFO from our loggers
    ready = READY.search(out)
    assert ready, out
    assert wait_dead(int(ready.group(2)), timeout=15)
    assert latest_run(tmp_path / "out") is not None


@pytest.mark.flow
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_temporary_server_dies_with_recsys(temp_server_env: dict[str, str], tmp_path: Path,
                                           sig: signal.Signals) -> None:
    """Kill `recsys run` once its server is up: the server must not outlive it (no orphans)."""
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config_dict(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-m", "flows", "run", "--config", str(config)],
                            cwd=tmp_path, env=temp_server_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if ready := READY.search(line):
                break
        else:
            pytest.fail("no server came up:\n" + "".join(seen[-30:]))
        server_pid = int(ready.group(2))
        assert alive(server_pid)
        proc.send_signal(sig)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -sig
    else:  # unwound through `finally` blocks: 143 usually, 1 when Prefect re-raised it
        assert proc.returncode != 0, rest[-3000:]
    assert wait_dead(server_pid), f"temporary server {server_pid} outlived recsys"
    if sig == signal.SIGTERM:  # a service manager's stop: a clean exit, not a traceback
        assert "Traceback" not in rest, rest


STOP_INSIDE_A_LIBRARY = """
import os, signal
from flows.server import prefect_api
with prefect_api() as url:
    print(url, flush=True)
    try:  # a library that wraps whatever it catches, as pydantic's serializer does
        os.kill(os.getpid(), signal.SIGTERM)
    except SystemExit as exc:
        raise RuntimeError("Error calling function: SystemExit") from exc
"""


@pytest.mark.flow
@pytest.mark.slow
def test_sigterm_wrapped_by_a_library_still_exits_cleanly(temp_server_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """SIGTERM surfacing as another exception is still a stop: exit 143, no traceback."""
    done = subprocess.run([sys.executable, "-c", STOP_INSIDE_A_LIBRARY], cwd=Path.cwd(),
                          env=temp_server_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr
    url = done.stdout.strip()
    assert url.startswith("http://127.0.0.1:"), done.stdout
    with pytest.raises(urllib.error.URLError):  # the temporary server went with the process
        urllib.request.urlopen(url + "/health", timeout=5)


@pytest.mark.slow
def test_server_start_failure_says_how_to_proceed(temp_server_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    """A temporary server that does not come up in time: a clean message, exit 1, no orphan."""
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config_dict(tmp_path)))
    done = subprocess.run([sys.executable, "-m", "flows", "run", "--config", str(config)],
                          cwd=tmp_path, env=temp_server_env | {
                              "RECSYS_PREFECT_STARTUP_TIMEOUT_S": "0.5"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert "Traceback" not in err and "did not answer within" in err, err
    assert "--engine local" in err and "prefect server start" in err
    assert "RECSYS_PREFECT_STARTUP_TIMEOUT_S" in err
    log = re.search(r"\(log: (\S+)\)", err)
    assert log and Path(log.group(1)).is_file()
    Path(log.group(1)).unlink()
    assert latest_run(tmp_path / "out") is None
