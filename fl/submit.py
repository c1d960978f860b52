"""Submit a run to a SuperLink, follow its log, and exit with its outcome: `flwr run --stream`
exits 0 even when the ServerApp failed (a site refused the run, say); this exits 1 and ends with
one line naming the failure (the site's rule when a site refused).

    python -m fl.submit APP [FEDERATION] --run-config FILE_OR_PAIRS [--timeout 3600]

APP is the Flower app (this repository: `.`), FEDERATION a connection of `$FLWR_HOME/config.toml`
(default: its default one). The SuperLink may still be starting: the submission is retried for
`--wait` seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FAILURE_MARKERS = ("Refusal", "refuses", "Error", "error")


def flwr_json(cmd: list[str], timeout: float) -> dict:
    """A `flwr ... --format json` answer ({} when it printed none)."""
    done = subprocess.run(
        [*cmd, "--format", "json"], capture_output=True, text=True, timeout=timeout
    )
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = {}
    return answer if isinstance(answer, dict) else {}


def submit(app: str, federation: list[str], run_config: str, wait: float) -> int:
    """Submit the run (retrying while the SuperLink starts); its run id, or SystemExit."""
    deadline = time.monotonic() + wait
    while True:
        cmd = ["flwr", "run", app, *federation, "--run-config", run_config]
        answer = flwr_json(cmd, timeout=120)
        if answer.get("success"):
            return int(answer["run-id"])
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the run was not submitted: {answer or 'no answer'}")
        time.sleep(2.0)


def status_of(run_id: int, federation: list[str]) -> str:
    """The run's status as `flwr ls` reports it (e.g. finished:completed)."""
    answer = flwr_json(["flwr", "ls", *federation, "--run-id", str(run_id)], timeout=120)
    runs = answer.get("runs") or [{}]
    return str(runs[0].get("status", "unknown"))


def failure_line(log: list[str]) -> str:
    """The line of the run's log that says why it failed: the last that names a refusal or
    an error (the ServerApp's last words), else the last line."""
    lines = [line.strip() for line in log if line.strip()]
    for line in reversed(lines):
        if any(m in line for m in FAILURE_MARKERS):
            return line
    return lines[-1] if lines else "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fl.submit",
        description="Submit a Flower run, print its log as it comes, and exit 0 only if the "
        "ServerApp completed (1 with a summary line otherwise).",
    )
    parser.add_argument("app", help="the Flower app folder (this repository: .)")
    parser.add_argument("federation", nargs="?", help="a connection of $FLWR_HOME/config.toml")
    parser.add_argument("--run-config", required=True, help="a TOML file or key=value pairs")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to retry submitting")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the run")
    args = parser.parse_args(argv)
    federation = [args.federation] if args.federation else []
    run_id = submit(args.app, federation, args.run_config, args.wait)
    print(f"run {run_id} submitted", flush=True)
    stream = subprocess.Popen(
        ["flwr", "log", str(run_id), *federation, "--stream"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = []
    assert stream.stdout is not None
    for line in stream.stdout:  # returns when the run has finished
        print(line, end="", flush=True)
        log.append(line)
    stream.wait(timeout=args.timeout)
    deadline = time.monotonic() + 60
    while not (status := status_of(run_id, federation)).startswith("finished"):
        if time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if status == "finished:completed":
        print(f"run {run_id} {status}")
        return 0
    print(f"error: run {run_id} {status}: {failure_line(log)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
