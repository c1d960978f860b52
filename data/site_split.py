"""A site's own split: run by each hospital on its own database, it writes the site's split file
(train/val/test row indices and class counts) where the site keeps it. Nothing leaves the site.

    python -m data.site_split --database_root /data/db --client_id 3 --output /data/db/mine.json

The site then names the file in its SuperNode's node config (`split-file=...`, with
`client-id=3 database-root=/data/db`); the coordinator's run needs no split file. The file has
the format of data/partition.py's (one client, `args.split_method` "site"), so the same loader
checks it against the database. Every class is split by the same stratified rule as a simulated
client's: `--test_data_frac` of it held out for test, then `--val_frac` of the rest for
validation (the validation set chooses lambda); with patient ids, whole patients are dealt
(data/patients.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data.database import Database
from data.partition import stratified_split, write_split_file
from data.patients import patient_units, split_unit
from data.split_config import SplitError
from data.split_file import SPLIT_FORMAT, database_fingerprint
from utils.cli import Parser


def site_split(
    db: Database, client_id: int, test_frac: float = 0.2, val_frac: float = 0.2, seed: int = 0
) -> dict:
    """The split of a site's whole database into its train/val/test rows (one client)."""
    if client_id < 0:
        raise SplitError(f"--client_id must be >= 0, got {client_id}")
    if not 0 < test_frac < 1:
        raise SplitError(f"--test_data_frac must lie in (0, 1), got {test_frac}")
    if not 0 <= val_frac < 1:
        raise SplitError(f"--val_frac must lie in [0, 1), got {val_frac}")
    if seed < 0:
        raise SplitError(f"--seed must be >= 0, got {seed}")
    _, labels, sources = db.pooled()
    patients = db.patients()
    units = patient_units(labels, sources, patients, db.n_classes)  # whole patients
    rng = np.random.default_rng(seed)
    train, test = stratified_split(np.arange(len(units.labels)), units.labels, test_frac, rng)
    train, val = stratified_split(train, units.labels[train], val_frac, rng)
    train, val, test = (units.expand(v) for v in (train, val, test))
    if len(train) == 0 or len(test) == 0:
        raise SplitError(f"{db.root}: too few records for a train and a test set ({len(labels)})")
    parts = {"train": train, "val": val, "test": test}
    unit = {} if patients is None else {"unit": split_unit(units, patients)}
    return {
        "format": SPLIT_FORMAT,
        "args": {
            "split_method": "site",
            "client_id": client_id,
            "test_data_frac": test_frac,
            "val_frac": val_frac,
            "seed": seed,
        },
        "database": {
            "n_samples": len(labels),
            "n_classes": db.n_classes,
            "sources": [f.name for f in db.files],
            "fingerprint": database_fingerprint(db),
            "root": str(db.root),
        },
        "clients": [
            {
                "id": client_id,
                "name": f"site {client_id}",
                **{k: v.tolist() for k, v in parts.items()},
            }
        ],
        "class_counts": [
            {
                "id": client_id,
                **{
                    k: np.bincount(labels[v], minlength=db.n_classes).tolist()
                    for k, v in parts.items()
                },
            }
        ],
        "dropped": [],
        **unit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database_root", required=True, help="this site's database folder. Required"
    )
    parser.add_argument(
        "--client_id",
        type=int,
        required=True,
        help="this site's client id (its SuperNode's client-id). Required",
    )
    parser.add_argument(
        "--output", required=True, help="the split file to write (kept on this site). Required"
    )
    parser.add_argument(
        "--test_data_frac",
        type=float,
        default=0.2,
        help="fraction of each class held out for test. Default: 0.2",
    )
    parser.add_argument(
        "--val_frac",
        type=float,
        default=0.2,
        help="fraction of each class's training records held out for validation. Default: 0.2",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split. Default: 0")
    args = parser.parse_args(argv)

    def make(db: Database) -> tuple[dict, Path]:
        split = site_split(db, args.client_id, args.test_data_frac, args.val_frac, args.seed)
        return split, Path(args.output)

    return write_split_file(args.database_root, args.output, make)


if __name__ == "__main__":
    sys.exit(main())
