"""Split an embedding database among simulated clients, with per-client train/val/test splits.

Usage (also called by main.py, which creates or reuses the split file):

    python data/partition.py --database_root DB --split_method by_labels_split \
        --n_clients 10 --alpha 0.3 --seed 202502 [--output FILE]

The split is a JSON file: its arguments, a fingerprint of the database, per-client index lists
(rows of the database's files concatenated in meta.json order) and per-client class counts.
The same arguments on the same database give the same file.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data.database import Database, DatabaseError, load_database
from data.patients import Units, patient_units, patients_across, split_unit
from data.split_config import NATURAL, SplitConfig, add_split_arguments, split_config_from_args
from data.split_file import SPLIT_FORMAT, load_split, rows_fingerprint
from data.split_methods import (
    SplitError,
    dirichlet_label_split,
    iid_split,
    pathological_split,
    stratified_split,
    subsample,
)
from utils.cli import OutputError, Parser, check_output, flag_name
from utils.io import write_json


def make_split(
    *,
    labels: np.ndarray,
    sources: np.ndarray,
    n_classes: int,
    cfg: SplitConfig,
    source_names: list[str] | None = None,
    patients: np.ndarray | None = None,
) -> dict:
    """Split rows among clients as `cfg` says; returns the JSON-ready split description.

    With patient ids the split deals out patients, each with all its records (data/patients.py:
    a patient's majority label stands for it, and `--s_frac` counts patients); no patient is
    in two clients or two of train/val/test. Without ids every record is a unit and the split
    is the record-level one.

    Args:
        labels: each record's label.
        sources: each record's database file (site).
        n_classes: the number of classes.
        cfg: the split flags.
        source_names: the files' names (default: their numbers).
        patients: each record's patient id (None: no ids, every record its own unit).
    """
    labels = np.asarray(labels, dtype=np.int64)
    sources = np.asarray(sources, dtype=np.int64)
    n_sources = int(sources.max()) + 1 if len(sources) else 0
    source_names = source_names or [str(i) for i in range(n_sources)]
    units = patient_units(labels, sources, patients, n_classes)
    if cfg.split_method in NATURAL and patients is not None:
        cut = patients_across(np.asarray(patients), sources)
        if cut is not None:
            raise SplitError(
                f"{flag_name(cfg, 'split_method')} {cfg.split_method}: a patient has records "
                "in two database files (sites); a patient belongs to one site"
            )
    split = _split_units(
        units=units,
        labels=labels,
        n_classes=n_classes,
        cfg=cfg,
        source_names=source_names,
        n_sources=n_sources,
    )
    split["database"]["fingerprint"] = rows_fingerprint(labels, sources)
    if patients is not None:
        split["unit"] = split_unit(units, patients)
        if units.mixed:
            warnings.warn(split["unit"]["mixed_note"], stacklevel=2)
    return split


def _split_units(
    *,
    units: Units,
    labels: np.ndarray,
    n_classes: int,
    cfg: SplitConfig,
    source_names: list[str],
    n_sources: int,
) -> dict:
    """`make_split` on units (patients, or records): the units' labels and sources choose,
    and each part is expanded to its records.

    Args:
        units: the units the split deals out (their labels, sources and records).
        labels: each record's label.
        n_classes: the number of classes.
        cfg: the split flags.
        source_names: the database files' names.
        n_sources: the number of database files.
    """
    record_labels = labels
    labels, sources = units.labels, units.sources
    rng = np.random.default_rng(cfg.seed)
    all_idx = np.arange(len(labels))

    if cfg.split_method in NATURAL:
        if cfg.s_frac <= 1:
            pools = [subsample(all_idx[sources == s], cfg.s_frac, rng) for s in range(n_sources)]
        else:
            per = int(cfg.s_frac) // max(n_sources, 1)
            pools = [
                subsample(all_idx[sources == s], min(per, int((sources == s).sum())), rng)
                for s in range(n_sources)
            ]
        names = list(source_names)
    else:
        pool = subsample(all_idx, cfg.s_frac, rng)
        if cfg.n_clients > len(pool):
            raise SplitError(
                f"{flag_name(cfg, 'n_clients')} {cfg.n_clients} is more than the {len(pool)} "
                f"{units.name} to split"
            )
        if cfg.split_method == "iid":
            pools = iid_split(pool, cfg.n_clients, rng)
        elif cfg.split_method == "by_labels_split":
            pools = dirichlet_label_split(
                indices=pool,
                labels=labels[pool],
                n_classes=n_classes,
                n_clients=cfg.n_clients,
                alpha=cfg.alpha,
                n_components=cfg.n_components,
                rng=rng,
            )
        else:
            pools = pathological_split(pool, labels[pool], cfg.n_clients, cfg.n_shards, rng)
        names = [str(i) for i in range(len(pools))]

    clients, counts, dropped = [], [], []
    for cid, pool in enumerate(pools):
        train, test = stratified_split(pool, labels[pool], cfg.test_data_frac, rng)
        train, val = stratified_split(train, labels[train], cfg.val_frac, rng)
        train, val, test = (units.expand(v) for v in (train, val, test))
        if len(train) == 0 or len(test) == 0:
            empty = "train" if len(train) == 0 else "test"
            reason = f"empty {empty} set ({len(pool)} {units.name} in all)"
            if cfg.split_method == "by_site":
                raise SplitError(
                    f"{flag_name(cfg, 'split_method')} by_site: site {names[cid]!r} has too few "
                    f"images to split ({reason}; {flag_name(cfg, 'test_data_frac')} "
                    f"{cfg.test_data_frac}, {flag_name(cfg, 's_frac')} {cfg.s_frac})"
                )
            warnings.warn(f"client {cid} dropped: {reason}", stacklevel=2)
            dropped.append({"id": cid, "name": names[cid], "reason": reason})
            continue
        part = {"train": train, "val": val, "test": test}
        clients.append({"id": cid, "name": names[cid], **{k: v.tolist() for k, v in part.items()}})
        counts.append(
            {
                "id": cid,
                **{
                    k: np.bincount(record_labels[v], minlength=n_classes).tolist()
                    for k, v in part.items()
                },
            }
        )
    if not clients:
        raise SplitError(
            f"the split leaves every client without train or test data "
            f"({flag_name(cfg, 'split_method')} {cfg.split_method}, "
            f"{flag_name(cfg, 'n_clients')} {cfg.n_clients}, {flag_name(cfg, 's_frac')} "
            f"{cfg.s_frac})"
        )
    return {
        "format": SPLIT_FORMAT,
        "args": asdict(cfg),
        "database": {
            "n_samples": len(record_labels),
            "n_classes": n_classes,
            "sources": source_names,
            "fingerprint": None,  # make_split's
        },
        "clients": clients,
        "class_counts": counts,
        "dropped": dropped,
    }


def split_database(db: Database, cfg: SplitConfig) -> dict:
    """Split a loaded database; `natural` makes one client per database file, `by_site` one per
    site (the files of a database made from a manifest with a site column), named by site."""
    _, labels, sources = db.pooled()
    names = [f.name for f in db.files]
    if cfg.split_method == "by_site":
        info = db.meta.get("files", {})
        sites = [info.get(n, {}).get("site") if isinstance(info, dict) else None for n in names]
        if any(s is None for s in sites):
            raise SplitError(
                f"{flag_name(cfg, 'split_method')} by_site: {db.root} records no site for file "
                f"{names[sites.index(None)]!r} (make the database from a manifest with a site "
                f"column, or use {flag_name(cfg, 'split_method')} natural for one client per file)"
            )
        names = [str(s) for s in sites]
    split = make_split(
        labels=labels,
        sources=sources,
        n_classes=db.n_classes,
        cfg=cfg,
        source_names=names,
        patients=db.patients(),
    )
    split["database"]["root"] = str(db.root)
    return split


def default_split_path(database_root: str | Path, cfg: SplitConfig) -> Path:
    """Where main.py keeps the split of `cfg` for a database: named by its arguments."""
    return Path(database_root) / "splits" / f"{cfg.key()}.json"


def load_or_make_split(
    db: Database, cfg: SplitConfig, path: str | Path | None = None
) -> tuple[dict, Path]:
    """Reuse the split file for these arguments if it exists, otherwise make and save it."""
    path = Path(path) if path is not None else default_split_path(db.root, cfg)
    if path.exists():
        split = load_split(path, db)
        if split["args"] != asdict(cfg):
            raise SplitError(
                f"{path}: split was made with other arguments ({split['args']}), not {asdict(cfg)}"
            )
        return split, path
    split = split_database(db, cfg)
    try:
        write_json(path, split)
    except OSError as err:
        raise SplitError(f"{path}: cannot write the split file ({err.strerror or err})") from None
    return split, path


def format_class_counts(split: dict, classes: list[str] | None = None) -> str:
    """A plain-text table of per-client sample counts per class and split."""
    counts = split["class_counts"]
    n_classes = len(counts[0]["train"]) if counts else 0
    head = ["client", "split", *(str(i) for i in range(n_classes)), "total"]
    rows = []
    for c in counts:
        for part in ("train", "val", "test"):
            rows.append([str(c["id"]), part, *(str(v) for v in c[part]), str(sum(c[part]))])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    if classes:
        lines.append("classes: " + ", ".join(f"{i}={name}" for i, name in enumerate(classes)))
    for d in split.get("dropped", []):
        lines.append(f"dropped client {d['id']}: {d['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        description="Split an embedding database among clients and write the split as JSON."
    )
    parser.add_argument(
        "--database_root",
        required=True,
        help="database folder made by data/create_db.py (holds meta.json)",
    )
    add_split_arguments(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=202502,
        help="split seed (kept apart from the run seed). Default: 202502, as the paper",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="split file to write. Default: <database_root>/splits/<method>_<hash>.json",
    )
    args = parser.parse_args(argv)

    def make(db: Database) -> tuple[dict, Path]:
        if args.seed < 0:
            raise SplitError(f"--seed must be >= 0, got {args.seed}")
        cfg = split_config_from_args(args, args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            split = split_database(db, cfg)
        return split, Path(args.output) if args.output else default_split_path(db.root, cfg)

    return write_split_file(args.database_root, args.output, make)


def write_split_file(
    database_root: str, output: str | None, make: Callable[[Database], tuple[dict, Path]]
) -> int:
    """The end of a split CLI (this one, data/site_split.py): make the split of the database
    and its path (`make`), write it, print its class counts. Exit status 0, or 2 after one line
    naming the flag or file."""
    try:
        if output:
            check_output(output, "--output")
        db = load_database(database_root)
        split, path = make(db)
        write_json(path, split)
    except (SplitError, DatabaseError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the split file: {err}", file=sys.stderr)
        return 2
    print(format_class_counts(split, db.classes))
    print(f"wrote {path} ({len(split['clients'])} clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
