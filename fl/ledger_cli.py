"""The command of a site's privacy ledgers (`python -m fl.ledger`, fl/ledger.py): initialise
one with its lifetime budget and unit, change its budget (logged), or print each ledger.

    python -m fl.ledger init LEDGER_DIR DATASET_ID [--epsilon 10] [--delta 1e-3]
        [--unit patient|record] [--database_root DB]
    python -m fl.ledger budget LEDGER_DIR DATASET_ID --epsilon E [--delta D]
    python -m fl.ledger show LEDGER_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.database import load_database
from fl.ledger import (
    DEFAULT_BUDGET_DELTA,
    DEFAULT_BUDGET_EPSILON,
    SUFFIX,
    UNITS,
    Ledger,
    LedgerError,
    describe,
)


def database_unit(database_root: str | None) -> str:
    """A new ledger's default unit: patient where the database has patient ids, else record
    (no database given: record). LedgerError naming the folder if it cannot be read."""
    if not database_root:
        return "record"
    try:
        has_ids = load_database(database_root).patients() is not None
    except (OSError, ValueError, KeyError) as err:
        raise LedgerError(f"{database_root}: not a readable database ({err})") from None
    return "patient" if has_ids else "record"


def build_parser() -> argparse.ArgumentParser:
    """The ledger command's parser: init, budget, show."""
    parser = argparse.ArgumentParser(
        prog="python -m fl.ledger",
        description="A site's privacy ledgers: initialise one (with its lifetime budget), "
        "change its budget (logged), or print each: the budget, the epsilon and delta spent "
        "(basic composition), what is left, each run and release.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a dataset's ledger with its lifetime budget")
    budget = sub.add_parser("budget", help="change a dataset's lifetime budget (logged)")
    for p, eps in ((init, DEFAULT_BUDGET_EPSILON), (budget, None)):
        p.add_argument("ledger_dir", help="the site's ledger folder (node config ledger-dir)")
        p.add_argument("dataset_id", help="the site's dataset (node config dataset-id)")
        p.add_argument("--client_id", type=int, default=0, help="the site's client-id (default 0)")
        p.add_argument(
            "--epsilon",
            type=float,
            default=eps,
            required=eps is None,
            help="lifetime epsilon of every run on this dataset"
            + (f" (default {eps:g})" if eps else ""),
        )
        p.add_argument(
            "--delta",
            type=float,
            default=DEFAULT_BUDGET_DELTA,
            help=f"lifetime delta (default {DEFAULT_BUDGET_DELTA:g}: ten runs at the default "
            "max-delta)",
        )
    init.add_argument(
        "--unit",
        choices=UNITS,
        default=None,
        help="what the budget counts, fixed for the ledger's life: patient (every run is "
        "charged per patient) or record (default: patient where --database_root has patient "
        "ids, else record)",
    )
    init.add_argument(
        "--database_root",
        default=None,
        help="the site's database (node config database-root), read for the default unit only",
    )
    show = sub.add_parser("show", help="print every ledger in a folder")
    show.add_argument("ledger_dir", help="the site's ledger folder (node config ledger-dir)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    """The ledger command; 2 (one error line naming the file or value) on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("init", "budget", "show", "-h", "--help"):
        argv = ["show", *argv]  # `python -m fl.ledger DIR` prints, as before
    args = build_parser().parse_args(argv)
    directory = Path(args.ledger_dir)
    try:
        if args.command == "init":
            unit = args.unit or database_unit(args.database_root)
            ledger = Ledger(directory, args.dataset_id, args.client_id)
            ledger.initialise(args.epsilon, args.delta, unit=unit)
            print(f"initialised {ledger.path} (its budget is per {unit})")
            return 0
        if args.command == "budget":
            ledger = Ledger(directory, args.dataset_id, args.client_id)
            if not ledger.path.exists():
                raise LedgerError(f"{ledger.path}: no such ledger (create it: init)")
            ledger.set_budget(args.epsilon, args.delta)
            print(describe(ledger.path))
            return 0
        if not directory.is_dir():
            raise LedgerError(f"{directory}: no such ledger directory")
        texts = [describe(p) for p in sorted(directory.glob(f"*{SUFFIX}"))]
    except LedgerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(texts) if texts else f"{directory}: no ledger yet (python -m fl.ledger init)")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
