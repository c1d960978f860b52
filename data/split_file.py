"""A split file's format and its checks against a database: the fingerprint that ties a split
to a database's content (`database_fingerprint`), and `load_split`, which refuses a split file
made for another database or malformed (ids, parts, row indices, patients across parts) with
one SplitError naming the file. data/partition.py and data/site_split.py write these files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NoReturn

import numpy as np

from data.database import Database
from data.patients import patients_across
from data.split_config import SplitError
from utils.io import read_json

SPLIT_FORMAT = 1


def rows_fingerprint(labels: np.ndarray, sources: np.ndarray) -> str:
    """The fingerprint of a database's pooled labels and sources (their rows, in order)."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(sources, dtype=np.int64).tobytes())
    return digest.hexdigest()


def database_fingerprint(db: Database) -> str:
    """What identifies a database's content for its splits and runs (its labels and sources)."""
    _, labels, sources = db.pooled()
    return rows_fingerprint(labels, sources)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_split(split: dict, db: Database, path: str | Path) -> None:
    """Refuse a split file that was made for another database or is malformed: every client needs
    a unique integer id, train and test rows, and row indices that are integers in range and
    used once across all clients and parts."""

    def refuse(what: str) -> NoReturn:
        raise SplitError(f"{path}: {what}")

    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT:
        refuse(f"not a split file made by data/partition.py (no 'format': {SPLIT_FORMAT})")
    info, clients = split.get("database"), split.get("clients")
    if not (
        isinstance(info, dict) and isinstance(clients, list) and isinstance(split.get("args"), dict)
    ):
        refuse("not a split file made by data/partition.py (needs 'args', 'database', 'clients')")
    _, labels, sources = db.pooled()
    if info.get("fingerprint") != rows_fingerprint(labels, sources):
        refuse(f"split was made for a different database than {db.root}")
    if not clients:
        refuse("lists no client")
    used = np.zeros(len(labels), dtype=bool)
    group = np.full(len(labels), -1, dtype=np.int64)  # (client, part) of each used row
    ids = set()
    for client in clients:
        cid = client.get("id") if isinstance(client, dict) else None
        if not _is_int(cid) or cid in ids:
            refuse(f"client id {cid!r} is not a unique integer")
        ids.add(cid)
        for part in ("train", "val", "test"):
            rows = client.get(part)
            if not isinstance(rows, list) or not all(_is_int(i) for i in rows):
                refuse(f"client {cid} '{part}' must be a list of row indices")
            idx = np.asarray(rows, dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
                refuse(
                    f"client {cid} '{part}' indices out of range "
                    f"(the database has {len(labels)} rows)"
                )
            if len(np.unique(idx)) != len(idx) or used[idx].any():
                refuse(f"client {cid} '{part}' uses a row twice (parts must not overlap)")
            used[idx] = True
            group[idx] = 3 * len(ids) + ("train", "val", "test").index(part)
        if not client["train"] or not client["test"]:
            refuse(f"client {cid} has no train or no test rows")
    patients = db.patients()
    if patients is not None and patients_across(patients[used], group[used]) is not None:
        refuse(
            "a patient's records lie in two clients or in two of train/val/test (a split made "
            "before patient ids were used, or by hand); remove it to make a patient-level split"
        )


def load_split(path: str | Path, db: Database) -> dict:
    """Read a split file and check it against the database."""
    try:
        split = read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise SplitError(str(err)) from None
    check_split(split, db, path)
    return split
