"""A copy of an embedding database whose records are grouped into pseudo-patients of k records
of one class (a stand-in for a patient's series of images, issue 32's study): in each file,
each class's records in a seeded random order, cut into runs of k (the last run of a class may
be shorter), each run one patient (ids unique across files). The embeddings are the same; the
copy adds the metadata column `patient` and meta.json's patient facts, so runs on it protect
patients (`--privacy_unit auto`). The study derives the copy from the encoded database rather
than a CSV manifest of the images: the same records and grouping, without encoding 25,000
images again.

    python experiments/fashionmnist/pseudo_patients.py SOURCE_DB OUT_DB --k 5 [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from data.database import load_database, load_embedding_file, save_embedding_file, write_meta
from data.patients import PATIENT_FIELD, files_patient_facts


def pseudo_patients(labels: np.ndarray, k: int, rng: np.random.Generator, first: int) -> np.ndarray:
    """Each record's patient: per class, a random order cut into runs of k, numbered from
    `first` upwards."""
    patients = np.empty(len(labels), dtype=np.int64)
    next_id = first
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for start in range(0, len(idx), k):
            patients[idx[start : start + k]] = next_id
            next_id += 1
    return patients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the encoded database (its meta.json folder)")
    parser.add_argument("out", type=Path, help="where the copy with patient ids is written")
    parser.add_argument("--k", type=int, required=True, help="records per pseudo-patient")
    parser.add_argument("--seed", type=int, default=0, help="the grouping's seed. Default: 0")
    args = parser.parse_args()
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    if args.out.exists():
        parser.error(f"{args.out} exists: remove it or name another folder")
    db = load_database(args.source)
    rng = np.random.default_rng(args.seed)
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    first = 0
    for f in db.files:
        patients = pseudo_patients(f.labels, args.k, rng, first)
        first = int(patients.max()) + 1
        fields = (*f.metadata_fields, PATIENT_FIELD)
        old = f.metadata if f.metadata is not None else np.zeros((len(f), 0), dtype=np.int64)
        metadata = np.concatenate([old, patients[:, None]], axis=1)
        save_embedding_file(tmp / f"{f.name}.npz", f.embeddings, f.labels, metadata, fields)
    meta = dict(db.meta)
    copy = [load_embedding_file(tmp / f"{f.name}.npz", len(db.classes)) for f in db.files]
    files = files_patient_facts(copy)
    meta["patients"] = files
    meta["pseudo_patients"] = {"k": args.k, "seed": args.seed, "source": str(args.source)}
    write_meta(tmp, meta)
    tmp.rename(args.out)
    print(f"{args.out}: {files['n_patients']} pseudo-patients of up to {args.k} records")


if __name__ == "__main__":
    main()
