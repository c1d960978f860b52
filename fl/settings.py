"""What a Flower run is: main.py's flags (one run-config string), plus per-site node config.

Run config (pyproject.toml `[tool.flwr.app.config]`, overridden by `flwr run --run-config`):
- `main-args`: main.py's command line, parsed by the library's parser (algorithms/options.py),
  so every flag, default and check is main.py's (`--device` is resolved on each site: auto uses
  the site's own GPU when it has one; sites always take the per-client path). Paths in it must
  be absolute: Flower runs the apps in other directories. The ServerApp opens none of them:
  `--database_root` and `--split_file` (optional) are the sites' defaults, which their node
  config may replace;
- `n-sites`: how many sites take part (0: main-args' --n_clients);
- `node-timeout-s`: how long the ServerApp waits for every client's SuperNode to connect;
- `reply-timeout-s`: how long it waits for the replies to one message (one round).

Node config (`flower-supernode --node-config`): `client-id` (in simulation Flower's
`partition-id` stands for it), optionally `database-root` and `split-file` (that site's own
paths, e.g. a split file from `python -m data.site_split`, replacing those of `main-args`), and
the site's privacy policy (fl/policy.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import shlex
from pathlib import Path

from algorithms.flags import spelling
from algorithms.methods import registry
from algorithms.options import Settings, UsageError, check_before_run, load_settings
from algorithms.run_files import DataFacts, data_facts
from data.clients import ClientData, client_datasets
from data.database import load_database
from data.partition import load_split


class SettingsError(ValueError):
    """A run or node config that cannot run; the message names the key or flag."""


def run_settings(run_config: dict) -> Settings:
    """Parse and check the run config (both apps call this, so both see the same settings)."""
    argv = shlex.split(str(run_config.get("main-args", "")))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            settings = load_settings(argv)
        check_before_run(settings)
    except SystemExit:
        raise SettingsError(f"main-args: {stderr.getvalue().strip()}") from None
    except UsageError as err:
        raise SettingsError(f"main-args: {err}") from None
    args, method = settings.args, settings.method
    if not method.flower:
        raise SettingsError(
            f"main-args: {spelling('method')} {method.name} does not run on Flower "
            f"(one of {', '.join(registry.flower_methods())})"
        )
    if args.resume:  # main.py's checkpoints are not written under Flower
        raise SettingsError(f"main-args: {spelling('resume')} does not run on Flower; start again")
    if args.vectorized == "on":
        raise SettingsError(
            f"main-args: {spelling('vectorized')} on does not run on Flower: each site is one "
            f"client (the per-client path; {spelling('vectorized')} trains simulated clients "
            "at once)"
        )
    if args.save_synthetic:
        raise SettingsError(
            f"main-args: {spelling('save_synthetic')} does not run on Flower: synthetic data stays "
            "on the sites"
        )
    for flag in ("database_root", "split_file"):
        value = getattr(args, flag)
        if (value or flag == "database_root") and not Path(value or "").is_absolute():
            raise SettingsError(
                f"main-args: {spelling(flag)} must be an absolute path, got {value!r}"
            )
    results = args.results_dir or args.results_root
    if not Path(results).is_absolute():
        flag = spelling("results_dir" if args.results_dir else "results_root")
        raise SettingsError(f"main-args: {flag} must be an absolute path, got {results!r}")
    # a site is one client: the per-client path, on the device --device names on that site
    # (auto: its own GPU if it has one)
    return dataclasses.replace(
        settings, execution=dataclasses.replace(settings.execution, vectorized=False)
    )


def is_generative(settings: Settings) -> bool:
    """Whether the run ends with synthesis (decoders, generators or FedPFT's Gaussians, then
    synthetic data and the lambda protocol), rather than a federated head: the method's flow."""
    return settings.method.flow in ("generative", "pft")


def is_pft(settings: Settings) -> bool:
    """Whether the run is FedPFT's (one release per site, pooled once): the method's flow."""
    return settings.method.flow == "pft"


def run_sites(run_config: dict, settings: Settings) -> int:
    """How many sites take part: run config `n-sites`, or main-args' --n_clients (0 or absent).
    The coordinator waits for them; a site sizes its secure plan for their sum."""
    return int(run_config.get("n-sites", 0)) or settings.args.n_clients


def node_client_id(node_config: dict) -> int:
    """This site's client id: `client-id`, or Flower's `partition-id` in simulation."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise SettingsError("node config: set client-id (flower-supernode --node-config 'client-id=0')")


def node_paths(node_config: dict, settings: Settings) -> tuple[str, str]:
    """(database root, split file) of this site: its node config's, else main-args'."""
    root = str(node_config.get("database-root", settings.args.database_root))
    split = node_config.get("split-file", settings.args.split_file)
    if not split:
        raise SettingsError(
            "node config: set split-file (this site's split file, e.g. written by "
            f"python -m data.site_split), or give {spelling('split_file')} in main-args"
        )
    return root, str(split)


def load_client(
    database_root: str, split_file: str, client_id: int
) -> tuple[ClientData, int, DataFacts]:
    """This site's data (train/val/test), the number of classes, and the facts of its data
    (names and hashes) that it reports at the start of a run."""
    clients, n_classes, facts = _load_clients(database_root, split_file)
    for c in clients:
        if c.id == client_id:
            return c, n_classes, facts
    ids = [c.id for c in clients]
    raise SettingsError(f"client-id {client_id} is not in {split_file} (clients {ids})")


@functools.lru_cache(maxsize=2)
def _load_clients(database_root: str, split_file: str) -> tuple[list[ClientData], int, DataFacts]:
    # Cached: in simulation one process serves every client, message after message.
    db = load_database(database_root)
    split = load_split(split_file, db)
    facts = data_facts(db.meta, database_root, split, Path(split_file))
    return client_datasets(db, split), db.n_classes, facts
