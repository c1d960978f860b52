"""Embedding databases: the `.npz` files `create_db.py` writes and every later stage reads.

A database is a folder with `meta.json` and one `.npz` per file listed in it (`train`/`test` for
MedMNIST and digits, `client_<hospital>` for Camelyon17). Each `.npz` holds `embeddings`
(float32, N x D), `labels` (int64, N) and optionally `metadata` (int64, N x K) with the column
names in `metadata_fields`; a column `patient` holds each record's patient id (data/patients.py).
The loader validates everything and names the file in every error.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.patients import file_patients, pooled_patients
from utils.io import read_json, save_npz, write_json

META_FILE = "meta.json"
# A database file's name in meta.json: `<name>.npz` inside the database folder, nowhere else.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DatabaseError(ValueError):
    """A database file is missing or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class EmbeddingFile:
    """One validated `.npz` file of a database."""

    name: str
    embeddings: np.ndarray
    labels: np.ndarray
    metadata: np.ndarray | None = None
    metadata_fields: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Database:
    """A validated database: its `meta.json` and its files, in the order `meta.json` lists them."""

    root: Path
    meta: dict
    files: list[EmbeddingFile] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def n_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def dim(self) -> int:
        return int(self.files[0].embeddings.shape[1])

    def pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All files concatenated: embeddings, labels, and the index of the file of each row."""
        x = np.concatenate([f.embeddings for f in self.files])
        y = np.concatenate([f.labels for f in self.files])
        source = np.concatenate(
            [np.full(len(f), i, dtype=np.int64) for i, f in enumerate(self.files)]
        )
        return x, y, source

    def patients(self) -> np.ndarray | None:
        """Every record's patient id (files concatenated), or None when a file has no
        `patient` metadata column: then each record is its own patient."""
        return pooled_patients([file_patients(f.metadata, f.metadata_fields) for f in self.files])


def save_embedding_file(
    path: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    metadata: np.ndarray | None = None,
    metadata_fields: tuple[str, ...] | list[str] = (),
) -> None:
    """Write one database file atomically, in the format `load_embedding_file` reads."""
    arrays: dict[str, np.ndarray] = {
        "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if metadata is not None:
        arrays["metadata"] = np.asarray(metadata, dtype=np.int64)
        arrays["metadata_fields"] = np.asarray(list(metadata_fields), dtype=str)
    save_npz(path, **arrays)


def load_embedding_file(path: str | Path, n_classes: int | None = None) -> EmbeddingFile:
    """Read and validate one `.npz` database file; raise DatabaseError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = {"embeddings", "labels"} - keys
            if missing:
                raise DatabaseError(
                    f"{path}: missing key(s) {sorted(missing)}; found {sorted(keys)}"
                )
            x = npz["embeddings"]
            y = npz["labels"]
            meta = npz["metadata"] if "metadata" in keys else None
            fields = (
                tuple(str(s) for s in npz["metadata_fields"]) if "metadata_fields" in keys else ()
            )
    except DatabaseError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DatabaseError(f"{path}: not a readable .npz file ({err})") from None

    if not np.issubdtype(x.dtype, np.floating):
        raise DatabaseError(f"{path}: 'embeddings' must be floating point, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatabaseError(f"{path}: 'labels' must be integers, got dtype {y.dtype}")
    if x.ndim != 2:
        raise DatabaseError(f"{path}: 'embeddings' must be 2-D (N x D), got shape {x.shape}")
    if y.ndim != 1:
        raise DatabaseError(f"{path}: 'labels' must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise DatabaseError(f"{path}: {len(x)} embeddings but {len(y)} labels")
    if len(y) == 0:
        raise DatabaseError(f"{path}: the file holds no samples")
    if x.shape[1] == 0:
        raise DatabaseError(f"{path}: embeddings have dimension 0")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DatabaseError(
            f"{path}: {len(rows)} embedding row(s) hold NaN or Inf (first: row {rows[0]})"
        )
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
        hi = "" if n_classes is None else f", {n_classes - 1}"
        raise DatabaseError(
            f"{path}: labels must lie in [0{hi}], found min {y.min()} and max {y.max()}"
        )
    if meta is not None:
        if meta.ndim != 2 or len(meta) != len(y):
            raise DatabaseError(
                f"{path}: 'metadata' must be N x K with N={len(y)}, got shape {meta.shape}"
            )
        if len(fields) != meta.shape[1]:
            raise DatabaseError(
                f"{path}: 'metadata_fields' names {len(fields)} columns, "
                f"metadata has {meta.shape[1]}"
            )
        meta = meta.astype(np.int64, copy=False)
    return EmbeddingFile(path.stem, x, y, meta, fields)


def load_meta(root: str | Path) -> dict:
    """Read and check `meta.json` of a database folder."""
    root = Path(root)
    path = root / META_FILE
    if not root.is_dir():
        raise DatabaseError(f"{root}: database folder not found")
    if path.exists() and not path.is_file():
        raise DatabaseError(f"{path}: not a file")
    if not path.is_file():
        raise DatabaseError(f"{path}: file not found (is {root} a database made by create_db.py?)")
    try:
        meta = read_json(path)
    except ValueError as err:
        raise DatabaseError(str(err)) from None
    for key in ("classes", "files"):
        if key not in meta:
            raise DatabaseError(f"{path}: missing key '{key}'")
    if not isinstance(meta["classes"], list) or len(meta["classes"]) < 2:
        raise DatabaseError(f"{path}: 'classes' must list at least two class names")
    if not isinstance(meta["files"], dict | list) or not meta["files"]:
        raise DatabaseError(f"{path}: 'files' lists no database file")
    for name in meta["files"]:
        # file names are joined with the database folder: plain names only, never a path
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            raise DatabaseError(
                f"{path}: file name {name!r} in 'files' is not a plain name "
                "(letters, digits, '_', '-', '.'; no folder)"
            )
    return meta


def write_meta(root: str | Path, meta: dict) -> None:
    """Write `meta.json` atomically."""
    write_json(Path(root) / META_FILE, meta)


def load_database(root: str | Path) -> Database:
    """Load every file listed in `meta.json`, validated, with consistent embedding dimensions."""
    root = Path(root)
    meta = load_meta(root)
    n_classes = len(meta["classes"])
    files = [load_embedding_file(root / f"{name}.npz", n_classes) for name in meta["files"]]
    dims = {f.name: f.embeddings.shape[1] for f in files}
    if len(set(dims.values())) > 1:
        raise DatabaseError(f"{root}: embedding dimensions differ between files: {dims}")
    expected = meta.get("embedding_dim")
    if expected is not None and int(expected) != files[0].embeddings.shape[1]:
        raise DatabaseError(
            f"{root}: meta.json says embedding_dim {expected}, "
            f"files hold {files[0].embeddings.shape[1]}"
        )
    return Database(root, meta, files)


# ----------------------------------------------------------------------------- encoder facts

ENCODER_FACTS = ("backbone", "weights_sha256", "preprocessing")


def encoder_facts(meta: dict) -> dict:
    """How a database's embeddings were made: backbone, hash of its weights and the image
    preprocessing (for databases made before `preprocessing` was recorded: their data config).
    Embeddings of databases that differ in any of these are not comparable."""
    pre = meta.get("preprocessing")
    if pre is None:
        pre = {"data_config": meta.get("data_config")}
    return {
        "backbone": meta.get("backbone"),
        "weights_sha256": meta.get("weights_sha256") or meta.get("weights"),
        "preprocessing": pre,
    }


def encoder_mismatch(facts: dict[int, dict]) -> str | None:
    """None when every site's database was encoded alike; else one line naming the site(s) that
    differ from the most common choice and in what (backbone, weights or preprocessing)."""
    import json

    for key in ENCODER_FACTS:
        values = {cid: json.dumps(f.get(key), sort_keys=True) for cid, f in facts.items()}
        kinds = sorted(set(values.values()), key=lambda v: (-list(values.values()).count(v), v))
        if len(kinds) > 1:
            odd = sorted(cid for cid, v in values.items() if v != kinds[0])
            usual = kinds[0]
            theirs = ", ".join(f"client {cid}: {values[cid][:120]}" for cid in odd)
            what = {"weights_sha256": "weights (SHA-256 of the file)"}.get(key, key)
            return (
                f"site(s) {', '.join(map(str, odd))} encoded their database with another {what} "
                f"than the others ({theirs}; the others: {usual[:120]}); re-encode with the "
                "same create_db.py --backbone/--weights"
            )
    return None


def summary_table(meta: dict, root: Path) -> str:
    """A short human summary: files, samples, per-class counts, dimension, time."""
    classes = meta["classes"]
    width = max(5, *(len(n) for n in meta["files"]))
    head = f"{'file':<{width}} {'n':>7} " + " ".join(f"{i:>6}" for i in range(len(classes)))
    lines = [
        f"{meta['dataset']} -> {root}  ({meta['backbone']}, weights {meta['weights']})",
        head,
    ]
    for name, info in meta["files"].items():
        counts = " ".join(f"{c:>6}" for c in info["class_counts"])
        lines.append(f"{name:<{width}} {info['n']:>7} {counts}")
    total = sum(info["n"] for info in meta["files"].values())
    lines.append(f"{'total':<{width}} {total:>7}")
    patients = meta.get("patients") or {}
    if patients.get("ids"):
        median, most = patients["records_per_patient_median"], patients["records_per_patient_max"]
        lines.append(
            f"patients: {patients['n_patients']} (records per patient: median {median:g}, "
            f"max {most})"
        )
    lines.append("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
    rate = total / meta["encode_seconds"] if meta["encode_seconds"] > 0 else float("nan")
    lines.append(
        f"embedding dim {meta['embedding_dim']}, input {meta['image_size']} px, "
        f"{meta['elapsed_seconds']:.1f} s in all, encoding {rate:.1f} img/s on {meta['device']}"
    )
    return "\n".join(lines)
