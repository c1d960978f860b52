"""Run the Flower app on this machine, every Flower component a separate process on loopback
(insecure HTTP: for tests and trials, never across a network).

    python -m fl.run_local --engine deployment -- --database_root DB --method dpcvae --n_clients 3
    python -m fl.run_local --engine simulation -- --database_root DB --method fedavg

After `--` come main.py's flags (parsed by the library's parser, algorithms/options.py). The
split file is made as main.py makes it (or reused), paths are made absolute, and then:
deployment starts a SuperLink and one SuperNode per client, each told its client id, database
and split file by its node config (`client-id=i database-root=... split-file=... ledger-dir=...
dataset-id=site<i>`, its ledger initialised here (no limit; the default budget with
`--hospital_policy`), plus the
keys of `--node_config`, e.g. a policy, on top of fl/policy.py's PERMISSIVE keys so that the
results equal main.py's; `--hospital_policy` leaves the sites the policy defaults of a
hospital instead), so the coordinator's run config names no split file;
simulation starts a SuperLink with Flower's simulation engine (Ray, one simulated SuperNode per
client, reading the split file that main-args names). The run is submitted with `flwr run`,
and this script waits for it to finish, stops every process it started (also on error, timeout
or Ctrl-C), and prints where main.py's results files are. Flower's own state and logs go to
`--work_dir`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomli
import tomli_w

from algorithms.experiment import RUN_ERRORS
from algorithms.flags import spelling
from algorithms.methods import registry
from algorithms.options import UsageError, load_settings
from algorithms.report import summary_line
from algorithms.run_files import data_facts, describe_run
from data.database import load_database
from data.partition import load_or_make_split
from fl.ledger import DEFAULT_BUDGET_DELTA, DEFAULT_BUDGET_EPSILON, Ledger
from fl.policy import PERMISSIVE
from fl.processes import (
    APP_DIR,
    CONNECTION,
    LocalRunError,
    Processes,
    free_port,
    submit_run,
    wait_for_run,
    wait_for_superlink,
)
from utils.results import METRICS_FILE, ResultsError, is_finished

ENGINES = ("deployment", "simulation")


@dataclass(frozen=True)
class LocalRun:
    """A finished run: main.py's results directory, Flower's status and the wall time."""

    run_dir: Path
    status: str
    seconds: float
    work_dir: Path


def prepare(main_argv: list[str]) -> tuple[list[str], Path, Path, int]:
    """main.py's flags with absolute paths (made or reused split file included), that split
    file, the run's results directory, and the number of clients."""
    settings = load_settings(main_argv)
    args, method = settings.args, settings.method
    if not method.flower:
        flower = ", ".join(registry.flower_methods())
        raise UsageError(f"{spelling('method')} {method.name} does not run on Flower ({flower})")
    db = load_database(args.database_root)
    split, split_path = load_or_make_split(db, settings.configs.split, args.split_file)
    paths = {
        "database_root": args.database_root,
        "split_file": split_path,
        "results_root": args.results_root,
        "results_dir": args.results_dir,
    }
    absolute = list(main_argv)
    for dest, path in paths.items():
        if path:
            absolute += [spelling(dest), str(Path(path).resolve())]
    facts = data_facts(db.meta, args.database_root, split, Path(split_path))
    _, run_dir = describe_run(load_settings(absolute), facts)
    if is_finished(run_dir) and not args.overwrite:
        raise ResultsError(
            f"{run_dir}: holds a finished run ({METRICS_FILE} exists); "
            f"pass {spelling('overwrite')} to replace it or choose another "
            f"{spelling('results_dir')}"
        )
    return absolute, Path(split_path).resolve(), run_dir, len(split["clients"])


def run_local(
    *,
    main_argv: list[str],
    engine: str = "deployment",
    work_dir: str | Path | None = None,
    timeout: float = 3600.0,
    env: dict[str, str] | None = None,
    node_config: dict[str, str] | None = None,
    server_app: Path | None = None,
    hospital_policy: bool = False,
) -> LocalRun:
    """Run main.py's experiment on Flower with local processes; stop them all before returning.
    `node_config`: more keys for every SuperNode's node config (deployment), e.g. a policy, on
    top of the PERMISSIVE policy keys (none with `hospital_policy`: the sites keep the policy
    defaults, fl/policy.py). `server_app`: a file defining a ServerApp `app` to run instead of
    fl.server_app (tests: a hostile coordinator); the run then need not write main.py's
    results.

    Args:
        main_argv: main.py's flags.
        engine: `deployment` (SuperLink and SuperNodes) or `simulation` (Flower's engine).
        work_dir: where Flower's state, the ledgers and the logs go (default: beside the run).
        timeout: seconds for the whole run.
        env: more environment variables for every process.
        node_config: more node-config keys for every SuperNode.
        server_app: a file defining another ServerApp (tests), or None.
        hospital_policy: keep the sites' default policy instead of PERMISSIVE.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    start = time.monotonic()
    argv, split_path, run_dir, n_clients = prepare(main_argv)
    database_root = str(Path(load_settings(argv).args.database_root).resolve())
    if engine == "deployment":  # the sites name their split file; the coordinator does not
        argv = without_flag(argv, spelling("split_file"))
    work = Path(work_dir or run_dir.parent / f"{run_dir.name}.flower").resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = flower_env(work / "home", port, env)
    run_config = work / "run_config.toml"
    run_config.write_text(
        tomli_w.dumps(
            {
                "main-args": shlex.join(argv),
                "n-sites": n_clients,
                "node-timeout-s": max(60, int(timeout)),
                "reply-timeout-s": max(60, int(timeout)),
            }
        )
    )
    with Processes(work / "logs", environment) as procs:
        link = ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port)]
        link += ["--disable-runtime-dependency-installation"]
        procs.start("superlink", link + (["--simulation"] if engine == "simulation" else []))
        wait_for_superlink(port, procs, deadline=start + min(timeout, 60))
        app = stage_app(work / "app", server_app)
        submit = ["flwr", "run", str(app), CONNECTION, "--run-config", str(run_config)]
        if engine == "deployment":
            for i in range(n_clients):
                ledger = Ledger(work / "ledger", f"site{i}", i)  # this run's (fl/ledger.py)
                if hospital_policy:
                    budget = (DEFAULT_BUDGET_EPSILON, DEFAULT_BUDGET_DELTA)
                else:
                    budget = (math.inf, 1.0)
                ledger.initialise(*budget, exist_ok=True)
                procs.start(
                    f"supernode{i}",
                    [
                        sys.executable,  # fl/supernode.py: checks the node config, then
                        "-m",  # becomes flower-supernode
                        "fl.supernode",
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        node_config_text(
                            {
                                "client-id": i,
                                "database-root": database_root,
                                "split-file": str(split_path),
                                "ledger-dir": str(ledger.directory),
                                "dataset-id": ledger.dataset_id,
                                **({} if hospital_policy else PERMISSIVE),
                                **(node_config or {}),
                            }
                        ),
                    ],
                )
        else:
            submit += ["--federation-config", f"num-supernodes={n_clients}"]
        run_id = submit_run(submit, procs, deadline=start + timeout)
        status = wait_for_run(run_id, procs, deadline=start + timeout)
    if status != "finished:completed":
        raise LocalRunError(f"run {run_id} ended {status}; logs in {work / 'logs'}")
    if server_app is None and not is_finished(run_dir):
        raise LocalRunError(f"run {run_id} completed without {run_dir / METRICS_FILE}")
    return LocalRun(run_dir, status, time.monotonic() - start, work)


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without any `flag VALUE` or `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


def node_config_text(config: dict) -> str:
    """A SuperNode's --node-config: space-separated key=value, strings quoted as TOML."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def stage_app(dest: Path, server_app: Path | None = None) -> Path:
    """A copy of the files `flwr run .` would ship (pyproject.toml and its `fab-include`
    patterns: `<file>` or globs such as `<dir>/**/*.py`): the same FAB, built without walking
    the whole repository (.venv, databases). `server_app`: a file shipped as the ServerApp
    instead."""
    pyproject = APP_DIR / "pyproject.toml"
    project = tomli.loads(pyproject.read_text())
    patterns = project["tool"]["flwr"]["app"]["fab-include"]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(pyproject, dest / "pyproject.toml")
    if server_app is not None:
        shutil.copy2(server_app, dest / "other_server_app.py")
        project["tool"]["flwr"]["app"]["fab-include"] = [*patterns, "other_server_app.py"]
        project["tool"]["flwr"]["app"]["components"]["serverapp"] = "other_server_app:app"
        (dest / "pyproject.toml").write_text(tomli_w.dumps(project))
    for pattern in patterns:
        top = APP_DIR / pattern.split("/")[0]
        files = [top] if top.is_file() else sorted(APP_DIR.glob(pattern))
        for path in files:
            if "__pycache__" in path.parts:
                continue
            target = dest / path.relative_to(APP_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def flower_env(home: Path, port: int, extra: dict[str, str] | None) -> dict[str, str]:
    """Environment of every Flower process: its own Flower home (config naming this SuperLink),
    this venv's commands first on PATH, no telemetry and no update check (offline)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        tomli_w.dumps(
            {
                "superlink": {
                    "default": CONNECTION,
                    CONNECTION: {"address": f"127.0.0.1:{port}", "insecure": True},
                }
            }
        )
    )
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        **(extra or {}),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=ENGINES, default="deployment")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="Flower's home, the run config and the process logs. "
        "Default: <run directory>.flower beside the run directory",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds for the whole run. Default: 3600"
    )
    parser.add_argument(
        "--node_config",
        default="",
        help="more node-config keys for every SuperNode (deployment), space-separated "
        'key=value, e.g. "max-epsilon=2 release-fidelity=false" (fl/policy.py). Default: none',
    )
    parser.add_argument(
        "--hospital_policy",
        action="store_true",
        help="deployment: give the SuperNodes no permissive policy keys, so that each site "
        "keeps fl/policy.py's defaults (a hospital's) but for --node_config's keys. Default: "
        "permissive (max-delta=1, min-count-noise=0, release-metrics and release-fidelity on)",
    )
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's flags")
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    try:
        pairs = shlex.split(args.node_config)
        if not all("=" in pair for pair in pairs):
            raise UsageError(f"--node_config must be key=value pairs, got {args.node_config!r}")
        extra = dict(pair.split("=", 1) for pair in pairs)
        result = run_local(
            main_argv=main_args,
            engine=args.engine,
            work_dir=args.work_dir,
            timeout=args.timeout,
            node_config=extra,
            hospital_policy=args.hospital_policy,
        )
    except (*RUN_ERRORS, LocalRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_line(result.run_dir))
    print(f"flower: {args.engine} in {result.seconds:.1f} s, logs in {result.work_dir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
