"""Start a site's SuperNode after checking its node config, so that a misconfigured site is found
when the hospital starts it, not inside the coordinator's traceback when a run arrives.

    python -m fl.supernode [flower-supernode's arguments, with --node-config "..."]
    python -m fl.supernode --check --node-config "client-id=3 database-root=... ..."

The check reads the node config as Flower does, then: every key is known and a deployed site
sets its own `database-root`, `ledger-dir` and `dataset-id` (fl/policy.py); the database and the
split file exist and hold the client; the ledger was initialised (`python -m fl.ledger init`);
on a ledger per patient, a set `max-patient-records` is at least the site's largest patient.
A failed check prints one line naming the key or path and exits with status 2; otherwise
`--check` prints what the site will serve, and without it the process becomes
`flower-supernode` with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from flwr.common.config import parse_config_args

from data.database import DatabaseError, load_database
from data.partition import load_split
from data.split_config import SplitError
from fl.ledger import NOT_INITIALISED, Ledger, LedgerError, spent
from fl.policy import PolicyError, site_policy
from fl.settings import load_client, node_client_id
from fl.units import check_patient_cap, largest_patient


class SiteConfigError(ValueError):
    """A node config a site cannot start with (the message names the key or path)."""


def check_node_config(node_config: dict) -> str:
    """Check a deployed site's node config; a line saying what it serves, or SiteConfigError."""
    try:
        policy = site_policy(node_config)
        if "client-id" not in node_config:
            raise SiteConfigError("node config: set client-id (which client of the split)")
        client_id = node_client_id(node_config)
        root = Path(str(node_config["database-root"]))
        if not (root / "meta.json").is_file():
            raise SiteConfigError(f"database-root {root}: no embedding database (meta.json)")
        split = Path(str(node_config.get("split-file", "")))
        if not split.is_file():
            raise SiteConfigError(
                f"split-file {split}: no such file (python -m data.site_split writes one)"
            )
        try:
            ids = [c["id"] for c in load_split(split, load_database(root))["clients"]]
        except (SplitError, DatabaseError) as err:
            raise SiteConfigError(f"split-file {split}: {err}") from None
        if client_id not in ids:
            raise SiteConfigError(f"client-id {client_id} is not in split-file {split} ({ids})")
        ledger = Ledger(node_config["ledger-dir"], str(node_config["dataset-id"]), client_id)
        if not ledger.path.exists():
            raise SiteConfigError(f"ledger-dir {ledger.directory}: {NOT_INITIALISED}")
        book, unit = ledger.read(), ledger.unit()
        if unit == "patient" and policy.max_patient_records:  # its cap against its patients
            data, _, _ = load_client(str(root), str(split), client_id)
            check_patient_cap(policy, unit, largest_patient(data.patients_train))
    except (PolicyError, LedgerError) as err:
        raise SiteConfigError(str(err)) from None
    eps, _ = spent(book)
    budget = ledger.budget()[0]
    return (
        f"client {client_id}, dataset {ledger.dataset_id}: serves {','.join(policy.methods)} "
        f"up to epsilon {policy.max_epsilon:g} a run; budget epsilon {budget:g}, spent {eps:g} "
        f"(per {unit})"
    )


def node_config_of(argv: list[str]) -> dict:
    """The --node-config value(s) in flower-supernode's arguments, parsed as Flower parses them."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--node-config"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--node-config=")]
    if not values:
        raise SiteConfigError("no --node-config: a site names its client, data and ledger there")
    try:
        return parse_config_args(values)
    except Exception as err:  # click's or tomli's: one line
        raise SiteConfigError(f"--node-config: not key=value pairs ({err})") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m fl.supernode",
        description="Check a site's node config, then start flower-supernode with the same "
        "arguments (every argument but --check is flower-supernode's).",
    )
    parser.add_argument("--check", action="store_true", help="only check, print, and exit")
    args, rest = parser.parse_known_args(argv)
    try:
        summary = check_node_config(node_config_of(rest))
    except SiteConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary, flush=True)
    if args.check:
        return 0
    exe = shutil.which("flower-supernode")
    if exe is None:
        print("error: flower-supernode is not on PATH (make venv installs it)", file=sys.stderr)
        return 2
    os.execv(exe, [exe, *rest])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
