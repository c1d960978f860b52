"""Atomic file writing (temp file + rename), JSON/CSV helpers and hashing.

Every file the project writes goes through here, so an interrupted run never leaves a
half-written file behind: readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _finite(obj: Any) -> Any:
    """Replace NaN/Inf floats by None: JSON has no NaN, and a silent 'NaN' token breaks readers."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a clear error names the file when it is missing (FileNotFoundError),
    unreadable or malformed (ValueError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None


def write_csv(
    path: str | os.PathLike, rows: Sequence[dict], fieldnames: Sequence[str] | None = None
) -> None:
    """Write dict rows as CSV, atomically; columns default to the union of keys, in order seen."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _finite(v) for k, v in row.items()})


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file into dict rows (values stay strings)."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save arrays as an uncompressed .npz, atomically (no pickled objects allowed).

    The zip entries get a fixed timestamp, so equal arrays give byte-identical files.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
