"""Patients: the unit of privacy and of splitting in medical imaging.

A database with patient ids holds, in every file, the integer metadata column `patient`
(database-wide ids); meta.json's `patients` block says whether ids exist and how many records a
patient has. Without that column (MedMNIST, digits, Fashion-MNIST, databases made before) each
record is its own patient. Ids come from Camelyon17's `patient` column, a manifest's patient
column, or DICOM PatientID, which is never stored: it is pseudonymized with HMAC-SHA256 under a
site key (a file of mode 0600 next to the database), and the pseudonyms are mapped to
consecutive integers in order of first appearance.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data.images import is_dicom, read_dicom_tags
from data.source_base import SourceError

PATIENT_FIELD = "patient"
KEY_SUFFIX = ".patient_key"  # <database_root>.patient_key: the site key, next to the database
KEY_BYTES = 32
# create_db.py's --patient_column
PATIENT_COLUMN_HELP = (
    "the manifest's patient id column (default: patient, if any): a patient's images share a "
    "site and a split, and splits never cut a patient. Without it, DICOM PatientIDs are used, "
    "stored only as consecutive integers keyed by a site key (<database_root>.patient_key, "
    "mode 0600)"
)


class PatientKeyError(ValueError):
    """The site key file cannot be read, made, or is readable by others; names the file."""


# ----------------------------------------------------------------------------- ids


def consecutive_ids(keys: Sequence[str | None]) -> np.ndarray:
    """Integer patient ids 0, 1, ... in order of first appearance; a record without a key
    (None) is its own patient (a fresh id)."""
    index: dict[str, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    fresh = 0
    for i, key in enumerate(keys):
        if key is None:
            out[i] = fresh
            fresh += 1
            continue
        if key not in index:
            index[key] = fresh
            fresh += 1
        out[i] = index[key]
    return out


def key_path(database_root: str | Path) -> Path:
    """The site key of a database: `<database_root>.patient_key`, beside (not in) its folder,
    so that copying the database does not copy the key."""
    root = Path(database_root)
    return root.parent / f"{root.name}{KEY_SUFFIX}"


def site_key(path: str | Path) -> bytes:
    """The site's HMAC key from `path`, made (32 random bytes, mode 0600) when missing; a key
    that others may read is refused."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise PatientKeyError(f"{path}: cannot create the site key ({err})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PatientKeyError(
            f"{path}: the site key is readable by others (mode {mode:o}); chmod 600 it"
        )
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise PatientKeyError(f"{path}: not a site key ({err})") from None
    if len(key) < 16:
        raise PatientKeyError(f"{path}: the site key holds {len(key)} bytes; at least 16 needed")
    return key


def pseudonym(key: bytes, patient_id: str) -> str:
    """HMAC-SHA256 of a clear patient id under the site key (hex)."""
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def dicom_patient_id(path: str | Path) -> str | None:
    """A DICOM file's PatientID (None when absent or empty); read without pixel data."""
    ds = read_dicom_tags(path, ["PatientID"])
    value = str(getattr(ds, "PatientID", "") or "").strip()
    return value or None


def check_patient_rows(rows: Sequence[Any]) -> None:
    """Refuse a patient at two sites or in both train and test (own_data's rows): a patient's
    records move together. The message names the rows, never the patient."""
    first: dict[str, Any] = {}
    for r in rows:
        if r.patient is None:
            continue
        seen = first.setdefault(r.patient, r)
        for what, a, b in (("site", seen.site, r.site), ("split", seen.split, r.split)):
            if a != b:
                raise SourceError(
                    f"{r.where}: this patient's records lie in two {what}s (also at "
                    f"{seen.where}); all records of a patient must share one {what}"
                )


def patient_keys(rows: Sequence[Any], key_file: str | Path | None) -> list[str | None] | None:
    """Each own_data row's patient key: the manifest's patient id, else (given the site key
    file) the keyed hash of its DICOM PatientID; None when no row has one. Clear ids are never
    written."""
    if any(r.patient is not None for r in rows):
        return [r.patient for r in rows]
    if key_file is None:
        return None
    ids = [dicom_patient_id(r.path) if _is_dicom_file(r.path) else None for r in rows]
    if not any(ids):
        return None
    try:
        key = site_key(key_file)
    except PatientKeyError as err:
        raise SourceError(str(err)) from None
    keys = [None if i is None else pseudonym(key, i) for i in ids]
    check_patient_rows([replace(r, patient=k) for r, k in zip(rows, keys)])
    return keys


def _is_dicom_file(path: Path) -> bool:
    with Path(path).open("rb") as fh:
        return is_dicom(fh.read(132), path)


# ----------------------------------------------------------------------------- facts


def file_patients(metadata: np.ndarray | None, fields: Sequence[str]) -> np.ndarray | None:
    """The `patient` column of a file's metadata, or None when it has none."""
    if metadata is None or PATIENT_FIELD not in fields:
        return None
    return np.asarray(metadata[:, list(fields).index(PATIENT_FIELD)], dtype=np.int64)


def pooled_patients(columns: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The files' patient columns concatenated; None unless every file has one."""
    present = [c for c in columns if c is not None]
    if not columns or len(present) != len(columns):
        return None
    return np.concatenate(present)


def files_patient_facts(files: Sequence[Any]) -> dict:
    """`patient_facts` of database files (anything with labels, metadata, metadata_fields)."""
    columns = [file_patients(f.metadata, f.metadata_fields) for f in files]
    return patient_facts(pooled_patients(columns), sum(len(f.labels) for f in files))


def patient_facts(patients: np.ndarray | None, n_records: int | None = None) -> dict:
    """What meta.json, a split and a run say of the unit: whether ids exist, the number of
    patients and records per patient (median, max). Without ids each record is a patient."""
    if patients is None:
        n = int(n_records or 0)
        return {
            "ids": False,
            "unit": "record",
            "note": "no patient ids: each record is its own patient",
            "n_patients": n,
            "records_per_patient_median": 1.0,
            "records_per_patient_max": 1,
        }
    _, counts = np.unique(patients, return_counts=True)
    return {
        "ids": True,
        "unit": "patient",
        "n_patients": len(counts),
        "records_per_patient_median": float(np.median(counts)) if len(counts) else 0.0,
        "records_per_patient_max": int(counts.max()) if len(counts) else 0,
    }


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Units:
    """The units a split deals out: patients (each with all its records) or, without ids,
    records. Units are numbered in order of their first record, so that without ids (or with
    one record per patient) unit i is record i and every split is the record-level one."""

    labels: np.ndarray  # each unit's label: its records' majority label (ties: the lower class)
    sources: np.ndarray  # each unit's database file (its first record's)
    starts: np.ndarray  # CSR: records of unit u are order[starts[u]:starts[u + 1]]
    order: np.ndarray
    mixed: int  # patients with records of several classes
    identity: bool  # one record per unit, unit i = record i
    name: str = "samples"  # what a unit is called in messages: samples, or patients

    def expand(self, units: np.ndarray) -> np.ndarray:
        """The sorted record indices of these units."""
        units = np.asarray(units, dtype=np.int64)
        if self.identity:
            return units
        if len(units) == 0:
            return np.empty(0, np.int64)
        parts = [self.order[self.starts[u] : self.starts[u + 1]] for u in units]
        return np.sort(np.concatenate(parts))


def record_units(labels: np.ndarray, sources: np.ndarray, name: str = "samples") -> Units:
    """Each record its own unit (no patient ids, or one record per patient in order)."""
    n = len(labels)
    return Units(labels, sources, np.arange(n + 1), np.arange(n), 0, True, name)


def patient_units(
    labels: np.ndarray, sources: np.ndarray, patients: np.ndarray | None, n_classes: int
) -> Units:
    """The patients of a database as split units (records without ids: `record_units`)."""
    labels = np.asarray(labels, dtype=np.int64)
    sources = np.asarray(sources, dtype=np.int64)
    if patients is None:
        return record_units(labels, sources)
    patients = np.asarray(patients, dtype=np.int64)
    _, first, inverse = np.unique(patients, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    unit_of = rank[inverse]  # units in order of their first record
    n_units = len(first)
    if n_units == len(labels) and np.array_equal(unit_of, np.arange(len(labels))):
        return record_units(labels, sources, "patients")
    order = np.argsort(unit_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(unit_of, minlength=n_units))])
    votes = np.zeros((n_units, n_classes), dtype=np.int64)
    np.add.at(votes, (unit_of, labels), 1)
    first_sorted = np.sort(first)
    return Units(
        labels=votes.argmax(axis=1),
        sources=sources[first_sorted],
        starts=starts,
        order=order,
        mixed=int(((votes > 0).sum(axis=1) > 1).sum()),
        identity=False,
        name="patients",
    )


MAJORITY_RULE = (
    "a patient's records move together (one client, one of train/val/test); a patient with "
    "records of several classes is placed by its majority label (ties: the lower class index)"
)


def split_unit(units: Units, patients: np.ndarray) -> dict:
    """The `unit` block of a split file made with patient ids: the facts and the rule."""
    return {
        **patient_facts(np.asarray(patients)),
        "mixed_label_patients": units.mixed,
        "rule": MAJORITY_RULE,
        "mixed_note": f"{units.mixed} patient(s) have records of several classes: {MAJORITY_RULE}",
    }


def patients_across(patients: np.ndarray, groups: np.ndarray) -> int | None:
    """A patient whose records lie in two groups (files, clients, parts), or None."""
    pairs = np.unique(np.stack([patients, groups], axis=1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    return int(ids[counts > 1][0]) if (counts > 1).any() else None
