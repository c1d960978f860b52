"""experiments/fashionmnist/pseudo_patients.py (issue 32's study): a database copy whose
records are grouped into pseudo-patients of k records of one class."""

import subprocess
import sys

import numpy as np
from helpers.databases import make_gaussian_db

from data.database import load_database

SCRIPT = "experiments/fashionmnist/pseudo_patients.py"


def test_pseudo_patients_are_k_records_of_one_class_unique_across_files(tmp_path):
    src = make_gaussian_db(tmp_path / "db", n_per_file=(120, 60))
    out = tmp_path / "k5"
    done = subprocess.run([sys.executable, SCRIPT, str(src), str(out), "--k", "5"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    db, before = load_database(out), load_database(src)
    patients = db.patients()
    labels = np.concatenate([f.labels for f in db.files])
    assert patients is not None and len(patients) == 180
    for p in np.unique(patients):
        members = labels[patients == p]
        assert len(members) <= 5 and len(set(members)) == 1
    # ids unique across files, embeddings unchanged, facts in meta.json
    first, second = (set(db.patients()[:120]), set(db.patients()[120:]))
    assert not first & second
    for a, b in zip(db.files, before.files):
        assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.labels, b.labels)
    assert db.meta["patients"]["ids"] and db.meta["patients"]["records_per_patient_max"] == 5
    again = subprocess.run([sys.executable, SCRIPT, str(src), str(out), "--k", "5"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr
