"""A site's CSV manifest (`--dataset csv --manifest FILE`, see data/own_data.py) read into
checked rows: its column names (`Columns`), one `Row` per image (an image folder's images are
rows too), and `manifest_rows`, which refuses a missing column, an empty path or label, a bad
split and sites or splits given for some rows only, naming the manifest line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from data.own_checks import DELIMITERS, detect_delimiter
from data.patients import check_patient_rows
from data.source_base import SourceError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Columns:
    """The manifest's column names (`--path_column` ...); `site`/`split`/`patient` are optional
    columns. `key_file`: the site key that pseudonymizes DICOM PatientIDs (None: not read)."""

    path: str = "path"
    label: str = "label"
    site: str = "site"
    split: str = "split"
    explicit: tuple[str, ...] = ()  # the optional columns named on the command line
    patient: str = "patient"
    key_file: str | None = None


DEFAULT_COLUMNS = Columns()  # frozen: one shared default


@dataclass
class Row:
    """One image: its file, label text, site and split, and where it was listed."""

    path: Path
    label: str
    site: str | None
    split: int  # 0 train, 1 test, -1 unspecified
    where: str  # "FILE line N" or the file itself
    patient: str | None = None  # the manifest's patient id (never written anywhere)


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise SourceError(f"--manifest {path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            delimiter = detect_delimiter(fh.readline())
            fh.seek(0)
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SourceError(f"--manifest {path}: cannot read as CSV ({err})") from None
    return header, records


def _delimiter_seen(manifest: Path) -> str:
    """The delimiter the manifest was read with, in words (for an error message)."""
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        return DELIMITERS[detect_delimiter(fh.readline())]


def manifest_rows(manifest: str | Path, columns: Columns = Columns()) -> list[Row]:
    """The rows of a CSV manifest, checked: required columns present, no empty path or label,
    splits train/test (all rows or none), sites all given or none."""
    manifest = Path(manifest)
    header, records = _read_manifest(manifest)
    for name, flag in ((columns.path, "--path_column"), (columns.label, "--label_column")):
        if name not in header:
            raise SourceError(
                f"{manifest}: no column {name!r} (columns: {', '.join(header) or 'none'}, "
                f"read as {_delimiter_seen(manifest)}-separated); name the column with {flag}"
            )
    optional = (
        (columns.site, "--site_column"),
        (columns.split, "--split_column"),
        (columns.patient, "--patient_column"),
    )
    for name, flag in optional:
        if flag in columns.explicit and name not in header:
            raise SourceError(
                f"{manifest}: no column {name!r} ({flag}); columns: {', '.join(header)}"
            )
    if not records:
        raise SourceError(f"{manifest}: lists no image")
    has_site, has_split = columns.site in header, columns.split in header
    has_patient = columns.patient in header
    base = manifest.resolve().parent
    rows = []
    for i, rec in enumerate(records):
        where = f"{manifest} line {i + 2}"
        if None in rec:
            raise SourceError(f"{where}: more fields than the header has")
        text = (rec.get(columns.path) or "").strip()
        label = (rec.get(columns.label) or "").strip()
        if not text:
            raise SourceError(f"{where}: empty {columns.path!r}")
        if not label:
            raise SourceError(f"{where}: empty {columns.label!r}")
        path = Path(text)
        path = path if path.is_absolute() else base / path
        site = (rec.get(columns.site) or "").strip() if has_site else None
        split_text = (rec.get(columns.split) or "").strip().lower() if has_split else ""
        if split_text and split_text not in SPLITS:
            raise SourceError(f"{where}: split {split_text!r}; expected train or test (or empty)")
        split = SPLITS.index(split_text) if split_text else -1
        patient = (rec.get(columns.patient) or "").strip() or None if has_patient else None
        rows.append(Row(path, label, site, split, where, patient))
    if has_site:
        empty = next((r for r in rows if not r.site), None)
        if empty is not None and any(r.site for r in rows):
            raise SourceError(f"{empty.where}: empty {columns.site!r} (other rows name a site)")
        if empty is not None:
            rows = [replace(r, site=None) for r in rows]
    if has_split:
        given = [r.split >= 0 for r in rows]
        if any(given) and not all(given):
            r = rows[given.index(False)]
            raise SourceError(f"{r.where}: empty {columns.split!r} (other rows give a split)")
    if has_patient:
        given = [r.patient is not None for r in rows]
        if any(given) and not all(given):
            r = rows[given.index(False)]
            raise SourceError(f"{r.where}: empty {columns.patient!r} (other rows name a patient)")
        check_patient_rows(rows)
    return rows
