"""Benchmark: seconds from starting `recsys serve` to its first scheduled nightly run in the API.

Run: `python bench/serve_latency.py [--cron "* * * * *"] [--until-running]`. Starts a private
`prefect server` (temporary PREFECT_HOME, SQLite, a free port), then `recsys serve --cron ...`
with PREFECT_API_URL pointing at it, and polls the API for flow runs of the
`nightly-recommendations/nightly` deployment. Prints, from the moment `recsys serve` starts:
the deployment registered, the first scheduled flow run visible, and (with --until-running)
the first run leaving SCHEDULED. The reference in the same run is the server's own start-up
time. Both processes are stopped with SIGTERM (process group) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOW, DEPLOYMENT = "nightly-recommendations", "nightly-recommendations"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(api: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"prefect server not healthy after {timeout} s")


def stop(proc: subprocess.Popen[Any], name: str, sig: int = signal.SIGTERM,
         timeout: float = 30.0) -> None:
    """Signal the process group (`sig`, then SIGTERM), wait; SIGKILL only as a last resort."""
    start = time.monotonic()
    for attempt in dict.fromkeys([sig, signal.SIGTERM]):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, attempt)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"{name} ignored {signal.Signals(attempt).name} for {timeout:.0f} s")
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(f"{name} stopped (exit {proc.returncode}) in {time.monotonic() - start:.1f} s")


async def poll(started: float, serve: subprocess.Popen[bytes], until_running: bool,
               timeout: float) -> dict[str, float]:
    """Seconds from `started` to: deployment registered, first run visible, first run started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )

    marks: dict[str, float] = {}
    flow_filter = FlowFilter(name=FlowFilterName(any_=[FLOW]))
    dep_filter = DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT]))
    async with get_client() as client:
        while time.monotonic() - started < timeout:
            if serve.poll() is not None:
                raise SystemExit(f"recsys serve exited with {serve.returncode}")
            now = time.monotonic() - started
            if "deployment" not in marks and await client.read_deployments(
                    flow_filter=flow_filter, deployment_filter=dep_filter):
                marks["deployment"] = now
            if "deployment" in marks:
                runs = await client.read_flow_runs(flow_filter=flow_filter,
                                                   deployment_filter=dep_filter)
                if runs and "first_run" not in marks:
                    marks["first_run"] = now
                    first = min(runs, key=lambda r: r.expected_start_time or r.created)
                    marks["first_run_expected_start_in"] = (
                        first.expected_start_time.timestamp() - time.time() + 0.0
                        if first.expected_start_time else float("nan"))
                    marks["scheduled_runs"] = len(runs)
                if until_running and any(r.state and r.state.type.value != "SCHEDULED"
                                         for r in runs):
                    marks["first_run_started"] = now
            if "first_run" in marks and (not until_running or "first_run_started" in marks):
                return marks
            await asyncio.sleep(0.2)
    raise SystemExit(f"no scheduled run within {timeout} s; got {marks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default="* * * * *")
    parser.add_argument("--until-running", action="store_true",
                        help="also wait for the first run to leave SCHEDULED (up to a minute)")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE",
                        "PREFECT_API_DATABASE_CONNECTION_URL")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    api = f"http://127.0.0.1:{free_port()}/api"
    port = api.rsplit(":", 1)[1].split("/")[0]
    t0 = time.monotonic()
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    serve: subprocess.Popen[bytes] | None = None
    try:
        wait_healthy(api, server)
        server_s = time.monotonic() - t0
        print(f"prefect server healthy after {server_s:.1f} s (reference)")
        env["PREFECT_API_URL"] = api
        os.environ["PREFECT_API_URL"] = api  # for this process's client
        os.environ["PREFECT_HOME"] = str(home)
        started = time.monotonic()
        serve = subprocess.Popen(
            [str(BIN / "recsys"), "serve", "--cron", args.cron], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        marks = asyncio.run(poll(started, serve, args.until_running, args.timeout))
    finally:
        if serve is not None:
            stop(serve, "recsys serve", signal.SIGINT)  # Ctrl-C, as an operator would
        stop(server, "prefect server")
    print(f"recsys serve -> deployment '{FLOW}/{DEPLOYMENT}' registered: "
          f"{marks['deployment']:.1f} s")
    print(f"recsys serve -> first scheduled flow run in the API: {marks['first_run']:.1f} s "
          f"({marks['scheduled_runs']} runs scheduled; the first due in "
          f"{marks['first_run_expected_start_in']:.0f} s)")
    if "first_run_started" in marks:
        print(f"recsys serve -> first run left SCHEDULED: {marks['first_run_started']:.1f} s")
    print(f"ratio first scheduled run / server start-up: {marks['first_run'] / server_s:.2f}")


if __name__ == "__main__":
    main()
