"""Patient ids (data/patients.py): from Camelyon17's metadata, a manifest's patient column and
DICOM PatientID (a keyed hash, never stored in clear) into the database; none for the others."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.images import TINY_BACKBONE, make_camelyon, make_images
from PIL import Image

import data.create_db as create_db
from data.database import load_database
from data.patients import consecutive_ids, key_path, patient_facts, pseudonym

TINY = ["--backbone", TINY_BACKBONE, "--random_init", "--quiet", "--num_workers", "0"]


def run_db(capsys, *args) -> tuple[int, str]:
    code = create_db.main([str(a) for a in args])
    return code, capsys.readouterr().err


def png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_images(1, 16, rgb=False, seed=seed)[0]).save(path)
    return path


def every_byte(root: Path) -> bytes:
    """The bytes of every file under `root` (and beside it: the site key)."""
    files = [p for p in root.parent.rglob("*") if p.is_file()]
    return b"".join(p.read_bytes() for p in files)


def write_patient_manifest(root: Path, patients: dict[str, tuple[str, str, int]]) -> Path:
    """`patients[id] = (site, label, n_images)`: rows in order, several images per patient."""
    lines = ["path,label,site,patient"]
    k = 0
    for pid, (site, label, n) in patients.items():
        for _ in range(n):
            p = png(root / "img" / f"{k}.png", k)
            lines.append(f"{p.relative_to(root)},{label},{site},{pid}")
            k += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_consecutive_ids_follow_first_appearance_and_none_is_its_own_patient():
    ids = consecutive_ids(["b", "a", None, "b", None, "a"])
    np.testing.assert_array_equal(ids, [0, 1, 2, 0, 3, 1])
    facts = patient_facts(ids)
    assert facts["ids"] and facts["n_patients"] == 4
    assert facts["records_per_patient_max"] == 2 and facts["records_per_patient_median"] == 1.5
    assert patient_facts(None, 7)["ids"] is False and patient_facts(None, 7)["n_patients"] == 7


def test_camelyon_patients_come_from_the_metadata(tmp_path, capsys):
    _, rows = make_camelyon(tmp_path / "ds", {0: 6, 1: 5})
    db = tmp_path / "db"
    code, err = run_db(capsys, "--dataset", "camelyon17", "--dataset_root", tmp_path / "ds",
                       "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    database = load_database(db)
    expected = [int(rows[r]["patient"]) for f in database.files for r in f.metadata[:, 0]]
    np.testing.assert_array_equal(database.patients(), expected)
    meta = json.loads((db / "meta.json").read_text())["patients"]
    assert meta["ids"] and meta["unit"] == "patient" and meta["n_patients"] == 4
    assert meta["records_per_patient_max"] == 3


def test_manifest_patient_column_gives_consecutive_ids_and_no_clear_id(tmp_path, capsys):
    manifest = write_patient_manifest(
        tmp_path,
        {
            "MRN-7781": ("north", "a", 3),
            "MRN-1200": ("north", "b", 2),
            "MRN-0042": ("south", "a", 4),
            "MRN-9999": ("south", "b", 1),
        },
    )
    db = tmp_path / "db"
    code, err = run_db(capsys, "--dataset", "csv", "--manifest", manifest, "--database_root", db,
                       *TINY)  # fmt: skip
    assert code == 0, err
    database = load_database(db)
    assert [f.name for f in database.files] == ["site_north", "site_south"]
    np.testing.assert_array_equal(database.patients(), [0] * 3 + [1] * 2 + [2] * 4 + [3])
    meta = json.loads((db / "meta.json").read_text())["patients"]
    assert (meta["n_patients"], meta["records_per_patient_median"]) == (4, 2.5)
    assert meta["records_per_patient_max"] == 4
    assert b"MRN-" not in b"".join(p.read_bytes() for p in db.rglob("*") if p.is_file())
    assert not key_path(db).exists()  # no DICOM id: no site key is made


@pytest.mark.parametrize(
    "where, needle",
    [("site", r"line 4: this patient's records lie in two sites \(also at .*line 2\)"),
     ("split", r"line 3: this patient's records lie in two splits")],
)  # fmt: skip
def test_a_patient_at_two_sites_or_splits_is_refused(tmp_path, capsys, where, needle):
    a, b, c = (png(tmp_path / f"{i}.png", i).name for i in range(3))
    rows = {
        "site": ["path,label,site,patient", f"{a},x,s1,P1", f"{b},y,s1,P2", f"{c},x,s2,P1"],
        "split": ["path,label,split,patient", f"{a},x,train,P1", f"{b},x,test,P1",
                  f"{c},y,test,P2"],
    }[where]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    db = tmp_path / "db"
    code, err = run_db(capsys, "--dataset", "csv", "--manifest", tmp_path / "m.csv",
                       "--database_root", db, *TINY)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(needle, err) and "P1" not in err, err
    assert not db.exists() or not any(db.iterdir())


def test_patient_column_flag_names_its_column(tmp_path, capsys):
    a, b = (png(tmp_path / f"{i}.png", i).name for i in range(2))
    (tmp_path / "m.csv").write_text(f"path,label,case\n{a},x,C1\n{b},y,C1\n")
    db = tmp_path / "db"
    args = ["--dataset", "csv", "--manifest", tmp_path / "m.csv", "--database_root", db, *TINY]
    code, err = run_db(capsys, *args, "--patient_column", "subject")
    assert code == 2 and "no column 'subject' (--patient_column)" in err, err
    code, err = run_db(capsys, *args, "--patient_column", "case")
    assert code == 0, err
    np.testing.assert_array_equal(load_database(db).patients(), [0, 0])


def test_dicom_patient_ids_are_stored_only_as_keyed_integers(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm", download=False))
    mr = Path(get_testdata_file("MR_small.dcm", download=False))
    shutil.copy(ct, tmp_path / "ct_again.dcm")
    p = png(tmp_path / "plain.png", 1)
    lines = ["path,label", f"{ct},1", f"{mr},0", "ct_again.dcm,1", f"{p.name},0", f"{mr},0"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    db = tmp_path / "site" / "db"
    code, err = run_db(capsys, "--dataset", "csv", "--manifest", tmp_path / "m.csv",
                       "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    # the same PatientID is one patient; the PNG without one is its own patient
    np.testing.assert_array_equal(load_database(db).patients(), [0, 1, 0, 2, 1])
    key = key_path(db)
    assert key.parent == db.parent and os.stat(key).st_mode & 0o777 == 0o600
    stored = every_byte(db)
    for clear in (b"1CT1", b"4MR1"):
        assert clear not in stored
    secret = bytes.fromhex(key.read_text())
    assert pseudonym(secret, "1CT1").encode() not in stored  # not even the keyed hash
    # a key others may read is refused, naming it, before anything is touched
    os.chmod(key, 0o644)
    before = every_byte(db)
    code, err = run_db(capsys, "--dataset", "csv", "--manifest", tmp_path / "m.csv",
                       "--database_root", db, "--overwrite", *TINY)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{key}: the site key is readable by others" in err
    assert every_byte(db) == before


def test_a_database_without_the_column_means_no_ids(gauss_db):
    db = load_database(gauss_db)
    assert db.patients() is None
