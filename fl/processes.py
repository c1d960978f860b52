"""The Flower processes of a loopback run (fl/run_local.py): starting, watching and stopping
them, and the flwr CLI calls that submit the run and wait for it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent  # the repository: pyproject.toml's Flower app


CONNECTION = "local"  # the SuperLink connection's name in this run's Flower config


class LocalRunError(RuntimeError):
    """The run could not start, failed, or timed out; the message says where the logs are."""


class Processes:
    """The processes this script starts, each in its own session and with its own log file;
    leaving the `with` block stops them and everything they started."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.started: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started[name] = proc
        return proc

    def check_alive(self, names: tuple[str, ...] = ("superlink", "supernode")) -> None:
        """Raise if a SuperLink or SuperNode this script started has exited."""
        for name, proc in self.started.items():
            if name.startswith(names) and proc.poll() is not None:
                raise LocalRunError(
                    f"{name} exited with code {proc.returncode}; see {self.log_dir / name}.log"
                )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every started process and its descendants, SIGKILL what is left after
        `grace` seconds."""
        pids = [p.pid for p in self.started.values() if p.poll() is None]
        family = set(pids) | descendants(pids)
        for pid in family:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_alive(pid) for pid in family):
            time.sleep(0.1)
        for pid in family | descendants(pids):
            _signal(pid, signal.SIGKILL)
        for proc in self.started.values():
            proc.wait()


def descendants(pids: list[int]) -> set[int]:
    """Every living process below `pids` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_superlink(port: int, procs: Processes, deadline: float) -> None:
    """Until the SuperLink answers on its health endpoint."""
    while True:
        procs.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LocalRunError(f"the SuperLink did not start; see {procs.log_dir}")
        time.sleep(0.2)


def flwr_cli(cmd: list[str], procs: Processes, deadline: float) -> dict:
    """Run a `flwr ... --format json` command; its JSON answer."""
    timeout = max(1.0, deadline - time.monotonic())
    try:
        out = subprocess.run(
            [*cmd, "--format", "json"],
            env=procs.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=APP_DIR,
        )
    except subprocess.TimeoutExpired:
        raise LocalRunError(f"`{' '.join(cmd)}` timed out; see {procs.log_dir}") from None
    try:
        answer = json.loads(out.stdout)
    except json.JSONDecodeError:
        answer = {}
    if out.returncode != 0 or not answer.get("success"):
        raise LocalRunError(
            f"`{' '.join(cmd)}` failed ({out.returncode}): {out.stdout.strip()} "
            f"{out.stderr.strip()}"
        )
    return answer


def submit_run(cmd: list[str], procs: Processes, deadline: float) -> int:
    """Submit the run; its Flower run id."""
    return int(flwr_cli(cmd, procs, deadline)["run-id"])


def wait_for_run(run_id: int, procs: Processes, deadline: float) -> str:
    """Follow the run's log (`flwr log --stream` returns when the run has finished) into
    logs/run.log, then read its status (e.g. finished:completed). Checks every few seconds
    that the SuperLink and SuperNodes are still up."""
    stream = procs.start("run", ["flwr", "log", str(run_id), CONNECTION, "--stream"])
    while stream.poll() is None:
        procs.check_alive()
        if time.monotonic() > deadline:
            raise LocalRunError(
                f"run {run_id} did not finish within the timeout; see {procs.log_dir}"
            )
        time.sleep(0.5)
    while True:
        ls = ["flwr", "ls", CONNECTION, "--run-id", str(run_id)]
        status = flwr_cli(ls, procs, deadline)["runs"][0]["status"]
        if status.startswith("finished"):
            return status
        if time.monotonic() > deadline:
            raise LocalRunError(f"run {run_id} still {status} at the timeout; see {procs.log_dir}")
        time.sleep(2.0)
