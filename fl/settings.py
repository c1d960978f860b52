"""What a Flower run is: main.py's flags (one run-config string), plus per-site node config.

Run config (pyproject.toml `[tool.flwr.app.config]`, overridden by `flwr run --run-config`):
- `main-args`: main.py's command line, parsed by main.py's own parser, so every flag, default and
  check is main.py's. Paths in it must be absolute: Flower runs the apps in other directories.
- `node-timeout-s`: how long the ServerApp waits for every client's SuperNode to connect;
- `reply-timeout-s`: how long it waits for the replies to one message (one round).

Node config (`flower-supernode --node-config`): `client-id` (in simulation Flower's
`partition-id` stands for it) and, optionally, `database-root` and `split-file`: that site's own
paths, replacing those of `main-args`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import shlex
from dataclasses import dataclass
from pathlib import Path

import main  # the CLI: its parser and config builders define every flag
from algorithms.generative import GENERATIVE_METHODS
from data.clients import ClientData, client_datasets
from data.database import load_database
from data.partition import load_split

FLOWER_METHODS = ("fedavg", "fedprox", *GENERATIVE_METHODS)


class SettingsError(ValueError):
    """A run or node config that cannot run; the message names the key or flag."""


@dataclass(frozen=True)
class RunSettings:
    """main.py's parsed flags for this run, its method and its validated config dataclasses."""

    argv: list[str]
    args: argparse.Namespace
    method: str
    configs: dict

    @property
    def seed(self) -> int:
        return int(self.args.seed)


def run_settings(run_config: dict) -> RunSettings:
    """Parse and check the run config (both apps call this, so both see the same settings)."""
    argv = shlex.split(str(run_config.get("main-args", "")))
    parser = main.build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit:
        raise SettingsError(f"main-args: {stderr.getvalue().strip()}") from None
    try:
        method = main.resolve_method(args)
        configs = main.build_configs(args, method)
    except ValueError as err:
        raise SettingsError(f"main-args: {err}") from None
    if method not in FLOWER_METHODS:
        raise SettingsError(
            f"main-args: --method {method} does not run on Flower (one of {FLOWER_METHODS})"
        )
    if getattr(args, "resume", False):  # main.py's checkpoints are not written under Flower
        raise SettingsError("main-args: --resume does not run on Flower; start the run again")
    if args.save_synthetic:
        raise SettingsError(
            "main-args: --save_synthetic does not run on Flower: synthetic data stays on the sites"
        )
    for flag in ("database_root", "split_file"):
        value = getattr(args, flag)
        if not value or not Path(value).is_absolute():
            raise SettingsError(f"main-args: --{flag} must be an absolute path, got {value!r}")
    results = args.results_dir or args.results_root
    if not Path(results).is_absolute():
        flag = "--results_dir" if args.results_dir else "--results_root"
        raise SettingsError(f"main-args: {flag} must be an absolute path, got {results!r}")
    return RunSettings(argv, args, method, configs)


def node_client_id(node_config: dict) -> int:
    """This site's client id: `client-id`, or Flower's `partition-id` in simulation."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise SettingsError("node config: set client-id (flower-supernode --node-config 'client-id=0')")


def node_paths(node_config: dict, settings: RunSettings) -> tuple[str, str]:
    """(database root, split file) of this site: its node config's, else main-args'."""
    root = str(node_config.get("database-root", settings.args.database_root))
    split = str(node_config.get("split-file", settings.args.split_file))
    return root, split


def load_client(database_root: str, split_file: str, client_id: int) -> tuple[ClientData, int]:
    """This site's data (train/val/test) and the number of classes."""
    clients, n_classes = _load_clients(database_root, split_file)
    for c in clients:
        if c.id == client_id:
            return c, n_classes
    ids = [c.id for c in clients]
    raise SettingsError(f"client-id {client_id} is not in {split_file} (clients {ids})")


@functools.lru_cache(maxsize=2)
def _load_clients(database_root: str, split_file: str) -> tuple[list[ClientData], int]:
    # Cached: in simulation one process serves every client, message after message.
    db = load_database(database_root)
    return client_datasets(db, load_split(split_file, db)), db.n_classes
