"""Patient-level splits: no patient in two clients or in two of train/val/test, for every split
method and a site's own split; data without patient ids splits exactly as before."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.images import TINY_BACKBONE, make_images
from PIL import Image

import data.create_db as create_db
from data.database import Database, EmbeddingFile, load_database
from data.partition import make_split, split_database
from data.site_split import site_split
from data.split_config import SplitConfig, SplitError
from data.split_file import check_split
from utils.io import sha256_file, write_json

METHODS = ("iid", "by_labels_split", "pathological_split", "natural")


def patient_data(n_patients=60, n_classes=4, seed=0, mixed=5):
    """Patients of 1-6 records each, at 3 sites, one class each but `mixed` patients whose
    records have two classes (a majority and one other record)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    labels = np.repeat(rng.integers(0, n_classes, size=n_patients), sizes)
    for p in np.flatnonzero(sizes >= 3)[:mixed]:
        last = np.flatnonzero(patients == p)[-1]
        labels[last] = (labels[last] + 1) % n_classes
    sources = np.repeat(np.arange(n_patients) % 3, sizes)
    order = np.argsort(sources, kind="stable")  # files hold their sites' records together
    return labels[order], sources[order], patients[order]


def owners(split, patients):
    """Each patient's set of (client, part)."""
    seen = {}
    for c in split["clients"]:
        for part in ("train", "val", "test"):
            for i in c[part]:
                seen.setdefault(int(patients[i]), set()).add((c["id"], part))
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_no_patient_is_cut_by_any_split_method(method):
    labels, sources, patients = patient_data()
    with pytest.warns(UserWarning, match="5 patient\\(s\\) have records of several classes"):
        split = make_split(
            labels=labels,
            sources=sources,
            n_classes=4,
            cfg=SplitConfig(split_method=method, n_clients=3),
            source_names=None,
            patients=patients,
        )
    seen = owners(split, patients)
    assert all(len(places) == 1 for places in seen.values())
    used = sum(len(c[p]) for c in split["clients"] for p in ("train", "val", "test"))
    kept = {p for p, places in seen.items()}
    assert used == int(np.isin(patients, list(kept)).sum())  # every record of a kept patient
    assert split["unit"]["unit"] == "patient" and split["unit"]["n_patients"] == 60
    assert split["unit"]["mixed_label_patients"] == 5 and "majority label" in split["unit"]["rule"]


def test_a_patient_is_stratified_by_its_majority_label():
    # 40 patients of 3 records: 20 of majority class 0 (one record of class 1), 20 of class 1
    patients = np.repeat(np.arange(40), 3)
    labels = np.repeat(np.arange(40) >= 20, 3).astype(int)
    labels[np.arange(20) * 3] = 1
    cfg = SplitConfig(split_method="iid", n_clients=1, test_data_frac=0.25, val_frac=0.0)
    with pytest.warns(UserWarning, match="20 patient"):
        split = make_split(
            labels=labels,
            sources=np.zeros_like(labels),
            n_classes=2,
            cfg=cfg,
            source_names=None,
            patients=patients,
        )
    test_patients = {int(patients[i]) for i in split["clients"][0]["test"]}
    assert len({p for p in test_patients if p < 20}) == 5  # 25% of each majority class
    assert len({p for p in test_patients if p >= 20}) == 5


def test_s_frac_counts_patients():
    labels, sources, patients = patient_data(mixed=0)
    cfg = SplitConfig(split_method="iid", n_clients=2, s_frac=30)
    split = make_split(labels=labels, sources=sources, n_classes=4, cfg=cfg, patients=patients)
    assert len(owners(split, patients)) == 30


def test_a_patient_in_two_files_is_refused_by_natural_splits():
    labels, sources, patients = patient_data(mixed=0)
    patients = patients.copy()
    patients[-1] = patients[0]  # the last site's last record: the first site's patient
    with pytest.raises(SplitError, match="a patient has records in two database files"):
        make_split(
            labels=labels,
            sources=sources,
            n_classes=4,
            cfg=SplitConfig(split_method="natural"),
            source_names=None,
            patients=patients,
        )
    with pytest.warns(UserWarning, match="1 patient"):  # the moved record's other class
        make_split(
            labels=labels,
            sources=sources,
            n_classes=4,
            cfg=SplitConfig(split_method="iid", n_clients=2),
            source_names=None,
            patients=patients,
        )


def test_one_record_per_patient_splits_as_without_ids():
    labels, sources, _ = patient_data(mixed=0)
    cfg = SplitConfig(n_clients=3)
    with_ids = make_split(
        labels=labels,
        sources=sources,
        n_classes=4,
        cfg=cfg,
        source_names=None,
        patients=np.arange(len(labels)),
    )
    without = make_split(labels=labels, sources=sources, n_classes=4, cfg=cfg)
    assert with_ids.pop("unit")["records_per_patient_max"] == 1
    assert with_ids == without


# Split files of data without patient ids, made by the code before patient-level splits
# (data/partition.py and data/site_split.py at cd385cf): the same bytes today.
PINNED = {
    "iid": "5420b486c6ceee1e04d57afdd9aafcd39ae68966350d62f0f686026a7ba3f0a7",
    "by_labels_split": "d73fc45de78f9404cbccd4c349ca33bc5e230e0cd9a4b2c5f5b948b9b8aa53d8",
    "pathological_split": "88292fa1c573321d85fe6ce65516a141704af01ddf5563640d4f7ded5d7ec631",
    "natural": "239b1f72855c611c82cc789af1c564a3dfe76419ee9e3d7e91338dcbf2cdfd81",
    "s_frac": "99cbedd37c70dd5ae3cbef02a5d1fea8a9f2b97a352a5f5d325fa855c29f1e47",
    "site": "31bb0ff5f7b5883dbedb80f1d5d9d5e7c5e071dbb6ad95dfb1f90e233b4d9349",
}


def test_splits_without_patient_ids_are_unchanged_byte_for_byte(tmp_path):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, size=400)
    src = np.repeat(np.arange(4), 100)
    got = {}
    for name, cfg in [
        *((m, SplitConfig(split_method=m, n_clients=4)) for m in METHODS),
        ("s_frac", SplitConfig(n_clients=4, s_frac=0.5)),
    ]:
        write_json(
            tmp_path / f"{name}.json", make_split(labels=y, sources=src, n_classes=5, cfg=cfg)
        )
        got[name] = sha256_file(tmp_path / f"{name}.json")
    x = rng.normal(size=(400, 3)).astype(np.float32)
    files = [EmbeddingFile("all", x, y)]
    db = Database(Path("db"), {"classes": list("abcde"), "files": {"all": {}}}, files)
    write_json(tmp_path / "site.json", site_split(db, 3, seed=5))
    got["site"] = sha256_file(tmp_path / "site.json")
    assert got == PINNED


def test_site_split_keeps_patients_whole():
    labels, sources, patients = patient_data(mixed=0)
    x = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    f = EmbeddingFile("all", x, labels, patients[:, None], ("patient",))
    db = Database(Path("db"), {"classes": list("abcd"), "files": {"all": {}}}, [f])
    split = site_split(db, 0, seed=3)
    assert all(len(places) == 1 for places in owners(split, patients).values())
    assert split["unit"]["n_patients"] == 60
    check_split(split, db, "mine.json")


def manifest_db(root: Path, capsys) -> Path:
    """A database from a manifest of 2 sites x 6 patients of 2-4 images each."""
    lines, k = ["path,label,site,patient"], 0
    for site in ("north", "south"):
        for p in range(6):
            for _ in range(2 + p % 3):
                path = root / "img" / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_images(1, 12, rgb=False, seed=k)[0]).save(path)
                lines.append(f"img/{k}.png,{'ab'[p % 2]},{site},{site}-{p}")
                k += 1
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    db = root / "db"
    code = create_db.main(["--dataset", "csv", "--manifest", str(root / "m.csv"),
                           "--database_root", str(db), "--backbone", TINY_BACKBONE,
                           "--random_init", "--quiet", "--num_workers", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    return db


def test_a_manifest_with_patients_of_several_images_splits_by_patient(tmp_path, capsys):
    db = load_database(manifest_db(tmp_path, capsys))
    patients = db.patients()
    for cfg in (SplitConfig(split_method="by_site"), SplitConfig(split_method="iid", n_clients=2)):
        split = split_database(db, cfg)
        assert all(len(places) == 1 for places in owners(split, patients).values())
        check_split(split, db, "split.json")
    # a record-level split of the same rows (as made before patient ids) is refused
    cut = json.loads(json.dumps(split))
    a, b = cut["clients"][0]["train"][0], cut["clients"][0]["test"][0]
    partner = next(
        i
        for i in cut["clients"][0]["train"]
        if patients[i] == patients[a] and i != a  # another record of a training patient
    )
    cut["clients"][0]["train"].remove(partner)
    cut["clients"][0]["test"] = sorted([*cut["clients"][0]["test"], partner])
    assert b in cut["clients"][0]["test"]
    with pytest.raises(SplitError, match="split.json: a patient's records lie in two clients"):
        check_split(cut, db, "split.json")
