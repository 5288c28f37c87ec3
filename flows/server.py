"""The Prefect API a command talks to: the configured server, or a temporary one it supervises."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0
"""How long a temporary server may take to answer /health (Prefect's own default, 20 s, was
too short: on a loaded 2-core machine a start took 27 to 61 s, the first one creating and
migrating the database)."""
STARTUP_TIMEOUT_ENV = "RECSYS_PREFECT_STARTUP_TIMEOUT_S"

TEMPORARY_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "false",  # nobody can open it: the server lives as long as one command
    "PREFECT__SERVER_EPHEMERAL": "1",  # only the services a single local run needs
    "PREFECT__SERVER_FINAL": "1",
    # The telemetry heartbeat writes to the shared SQLite database while the run's first
    # writes arrive, and dies with a 130-line "database is locked" traceback.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",  # automations: none on a temporary server
}

FIX_HINT = ("run without Prefect with `--engine local`, or start a Prefect server yourself "
            "(`prefect server start` in another terminal, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`)")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PrefectServerError(RuntimeError):
    """No Prefect API to talk to: the configured one is unreachable or a temporary one failed."""


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile; None when unset."""
    url = os.environ.get("PREFECT_API_URL")
    if url is None:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    return url or None


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Raise PrefectServerError naming `url` and the fix unless a server answers there."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (Prefect Cloud, for one, wants a key for /health): reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrefectServerError(
            f"the Prefect API at PREFECT_API_URL={url} is not reachable ({reason}). Start that "
            "server (`prefect server start`), point PREFECT_API_URL at a running one, unset it "
            "to let recsys start a temporary local server, or run without Prefect with "
            "`--engine local`") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent_hook() -> object:
    """A preexec_fn for Popen: the child gets SIGTERM when this process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: no dlopen in the child
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class TemporaryServer:
    """A private `uvicorn prefect.server.api.server:create_app` for one command.

    It runs in its own process group (so a terminal's Ctrl-C reaches only recsys, which then
    stops it in order) and gets SIGTERM from the kernel when recsys dies, however it dies
    (PR_SET_PDEATHSIG), so no server outlives its command. Its output goes to a log file, not
    the terminal; the file is kept and named when the server fails.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout if timeout is not None else float(
            os.environ.get(STARTUP_TIMEOUT_ENV, STARTUP_TIMEOUT_S))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        fd, name = tempfile.mkstemp(prefix="recsys-prefect-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.keep_log = False
        """Set when the server failed: its log stays for the user to read."""

    @property
    def api_url(self) -> str:
        """The API address clients use (PREFECT_API_URL)."""
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.port = _free_port()
        import prefect

        env = {**os.environ, **TEMPORARY_SERVER_ENV}
        env.pop("PREFECT_API_URL", None)
        with open(self.log_path, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir",
                 str(Path(prefect.__file__).resolve().parents[1]), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent_hook(),  # type: ignore[arg-type]
            )

    def start(self) -> None:
        """Start the server and wait until it answers, or raise PrefectServerError with the fix."""
        log.info("starting a temporary Prefect server (PREFECT_API_URL is not set)")
        began = time.monotonic()
        self.process = self._spawn()
        attempts = 1
        while time.monotonic() - began < self.timeout:
            code = self.process.poll()
            if code is not None:
                port_taken = "address already in use" in self.log_path.read_text(
                    errors="replace").lower()
                if port_taken and attempts < 3:  # another process took the free port: retry
                    attempts += 1
                    self.process = self._spawn()
                    continue
                self._fail(f"exited with code {code}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        log.info("temporary Prefect server ready on %s (pid %d) after %.1f s",
                                 self.api_url, self.process.pid, time.monotonic() - began)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self._fail(f"did not answer within {self.timeout:.0f} s")

    def _fail(self, what: str) -> None:
        self.keep_log = True
        self.stop()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        detail = ("; its last lines:\n  " + "\n  ".join(tail)) if tail else ""
        raise PrefectServerError(
            f"the temporary Prefect server {what} (log: {self.log_path}). To go on, {FIX_HINT}; "
            f"or allow it longer with {STARTUP_TIMEOUT_ENV}=300{detail}")

    def stop(self) -> None:
        """SIGTERM the server's process group, wait for it, SIGKILL it if it hangs."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not self.keep_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def _stop_on_sigterm(server: TemporaryServer,
                     received: list[int]) -> Callable[[int, FrameType | None], None]:
    """A SIGTERM handler: signal the server at once, then unwind (`finally` blocks run).

    The signal number goes into `received`: the SystemExit can surface inside a library that
    wraps it (pydantic turns it into a serialization error), and the caller still exits cleanly.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough
        received.append(signum)
        proc = server.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    return handler


def _drain_prefect_clients() -> None:
    """Send the run's last logs and events while the server is still up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=10, at_exit=False)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield a reachable Prefect API URL for flow runs made inside the block.

    With PREFECT_API_URL set (environment or profile) that server must answer, else a clean
    PrefectServerError says how to proceed. Without it a supervised temporary server is
    started and stopped again on exit, on Ctrl-C and on SIGTERM (a service manager's stop).
    """
    import prefect.main  # noqa: F401  Prefect's logging setup: our lines print in its format

    url = configured_api_url()
    if url is not None:
        check_reachable(url)
        yield url
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    server = TemporaryServer()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    received: list[int] = []
    if main and previous in (signal.SIG_DFL, None):  # SIGTERM -> SystemExit: `finally` runs
        signal.signal(signal.SIGTERM, _stop_on_sigterm(server, received))
    try:
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url  # for anything that reads the env
        # No "View at <url>" links: the temporary server serves no UI and ends with the command.
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
            try:
                yield server.api_url
            finally:
                _drain_prefect_clients()
        log.info("flow runs are kept in the Prefect database under PREFECT_HOME; "
                 "`prefect server start` shows them in the UI")
    except BaseException:
        if received:  # whatever the stop surfaced as, it is a stop: exit 128 + signal, quietly
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        if main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
