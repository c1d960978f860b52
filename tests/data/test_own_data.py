"""A site's own images (docs/own-data.md): image folders and CSV manifests of PNG/JPEG/TIFF (8
and 16 bit, grayscale and RGB) and DICOM, encoded by create_db.py; one client per site
(by_site); every bad input refused with exit status 2, one line naming the file, and nothing
written."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.flower import DPCVAE, SEEDED, hospital_node, run_in_process
from helpers.images import TINY_BACKBONE, make_images
from PIL import Image

import data.create_db as create_db
import main as main_module
from data.backbone import create_backbone
from data.database import encoder_facts, encoder_mismatch, load_database
from data.images import decode_image, to_8bit
from data.partition import split_database
from data.source_base import NamedBytes
from data.split_config import SplitConfig, SplitError
from utils.io import write_json

TINY = ["--backbone", TINY_BACKBONE, "--random_init", "--quiet", "--num_workers", "0"]
CLASSES = ("benign", "malignant")


def write_image(path: Path, kind: str, size: int, seed: int) -> Path:
    """One tiny image of a kind: png8 (L), png16 (I;16), jpeg (RGB), rgba (PNG), tif16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = make_images(1, size, rgb=False, seed=seed)[0]
    if kind == "png8":
        Image.fromarray(gray).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if kind in ("png16", "tif16"):
        img = Image.fromarray(gray.astype(np.uint16) * 257)
        out = path.with_suffix(".png" if kind == "png16" else ".tif")
        img.save(out)
        return out
    rgb = make_images(1, size, rgb=True, seed=seed)[0]
    if kind == "jpeg":
        Image.fromarray(rgb).save(path.with_suffix(".jpg"), quality=95)
        return path.with_suffix(".jpg")
    rgba = np.concatenate([rgb, np.full((size, size, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


KINDS = ("png8", "png16", "jpeg", "tif16", "rgba")


def make_manifest(root: Path, per_class: int = 4, sites=("north", "south")) -> Path:
    """Images of two sites and two classes, all kinds and sizes mixed; `root/manifest.csv`."""
    lines = ["path,label,site"]
    k = 0
    for site in sites:
        for cls in CLASSES:
            for i in range(per_class):
                kind = KINDS[k % len(KINDS)]
                p = write_image(root / "img" / site / f"{cls}_{i}", kind, 16 + 4 * (k % 3), k)
                lines.append(f"{p.relative_to(root)},{cls},{site}")
                k += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def run_db(capsys, *args) -> tuple[int, str, str]:
    code = create_db.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(needle, err), err


# ----------------------------------------------------------------------------- conversion


def test_16_bit_is_scaled_by_its_range_and_matches_8_bit(tmp_path):
    gray = make_images(1, 20, rgb=False, seed=1)[0]
    p8 = write_image(tmp_path / "a", "png8", 20, 1)
    p16 = write_image(tmp_path / "b", "png16", 20, 1)
    t16 = write_image(tmp_path / "c", "tif16", 20, 1)
    for p in (p8, p16, t16):
        img = decode_image(NamedBytes(p.read_bytes()), str(p))
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), gray)  # v * 257 * 255 / 65535 = v
    bb = create_backbone(TINY_BACKBONE, random_init=True)  # the backbone's input is the same
    b8, b16 = (bb.prepare(NamedBytes(p.read_bytes())) for p in (p8, p16))
    np.testing.assert_array_equal(b8, b16)
    twelve = Image.fromarray(np.array([[0, 4095, 65535]], dtype=np.uint16))
    np.testing.assert_array_equal(np.asarray(to_8bit(twelve)), [[0, 16, 255]])
    assert to_8bit(Image.new("RGBA", (2, 2))).mode == "RGB"
    assert to_8bit(Image.new("LA", (2, 2))).mode == "L"


def test_dicom_samples_read_with_their_luts(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = Path(get_testdata_file(name, download=False))
        img = decode_image(NamedBytes(path.read_bytes()), str(path))
        arr = np.asarray(img)
        assert img.mode == "L" and arr.min() == 0 and arr.max() == 255 and arr.std() > 10


# ----------------------------------------------------------------------------- databases


def test_manifest_with_sites_makes_one_file_per_site_and_records_encoder(tmp_path, capsys):
    manifest = make_manifest(tmp_path)
    db = tmp_path / "db"
    code, _, err = run_db(capsys, "--dataset", "csv", "--manifest", manifest,
                          "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    meta = json.loads((db / "meta.json").read_text())
    assert list(meta["files"]) == ["site_north", "site_south"]
    assert meta["files"]["site_north"]["site"] == "north"
    assert meta["classes"] == list(CLASSES) and meta["files"]["site_south"]["n"] == 8
    assert meta["preprocessing"]["image_conversion"].startswith("v1")
    assert meta["weights_sha256"] is None and meta["backbone"] == TINY_BACKBONE
    loaded = load_database(db)
    assert loaded.files[0].metadata_fields == ("row", "split")
    assert loaded.files[1].metadata[:, 0].tolist() == list(range(8, 16))
    split = split_database(loaded, SplitConfig(split_method="by_site", test_data_frac=0.25))
    assert [c["name"] for c in split["clients"]] == ["north", "south"]


def test_imagefolder_train_test_and_mixed_channels(tmp_path, capsys):
    root = tmp_path / "folder"
    for split, n in (("train", 3), ("test", 2)):
        for c, cls in enumerate(("cat", "ant")):
            for i in range(n):
                write_image(root / split / cls / f"x{i}", KINDS[(i + c) % 5], 12 + i, i + 10 * c)
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    db = tmp_path / "db"
    code, out, err = run_db(capsys, "--dataset", "imagefolder", "--dataset_root", root,
                            "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    meta = json.loads((db / "meta.json").read_text())
    assert meta["classes"] == ["ant", "cat"] and list(meta["files"]) == ["train", "test"]
    assert meta["files"]["train"]["class_counts"] == [3, 3]
    assert meta["files"]["test"]["n"] == 4


def test_manifest_columns_integer_labels_and_dicom(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    mr = get_testdata_file("MR_small.dcm", download=False)
    png = write_image(tmp_path / "p", "png16", 16, 3)
    # CT_small's patient (its DICOM PatientID) stays in one split (data/patients.py)
    rows = [f"{ct},1,train", f"{png.name},0,train", f"{mr},0,test", f"{ct},1,train"]
    (tmp_path / "m.csv").write_text("file,y,part\n" + "\n".join(rows) + "\n")
    db = tmp_path / "db"
    columns = ["--path_column", "file", "--label_column", "y", "--split_column", "part"]
    code, _, err = run_db(capsys, "--dataset", "csv", "--manifest", tmp_path / "m.csv", *columns,
                          "--classes", "normal,abnormal", "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    meta = json.loads((db / "meta.json").read_text())
    assert meta["classes"] == ["normal", "abnormal"] and list(meta["files"]) == ["train", "test"]
    x = load_database(db).files[0].embeddings
    assert np.isfinite(x).all() and not np.allclose(x[0], x[1])


# ----------------------------------------------------------------------------- bad input


def _bad_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    cases = {}
    good = write_image(tmp / "good" / "g", "png8", 12, 0)
    junk = tmp / "junk.png"
    junk.write_bytes(b"not an image at all")
    m = tmp / "corrupt.csv"
    m.write_text(f"path,label\n{good},a\n{junk},b\n")
    cases["corrupt"] = (["--dataset", "csv", "--manifest", m], r"corrupt\.csv line 3: .*junk\.png")
    m = tmp / "missing.csv"
    m.write_text(f"path,label\n{good},a\nnowhere.png,b\n")
    cases["missing"] = (["--dataset", "csv", "--manifest", m], r"line 3: image file .*nowhere")
    m = tmp / "unknown.csv"
    m.write_text(f"path,label\n{good},a\n{good},zebra\n")
    cases["unknown label"] = (
        ["--dataset", "csv", "--manifest", m, "--classes", "a,b"],
        r"unknown\.csv line 3: label 'zebra' is not one of --classes",
    )
    m = tmp / "range.csv"
    m.write_text(f"path,label\n{good},0\n{good},7\n")
    cases["label out of range"] = (
        ["--dataset", "csv", "--manifest", m, "--classes", "a,b"],
        r"range\.csv line 3: label '7'",
    )
    m = tmp / "nopath.csv"
    m.write_text(f"file,label\n{good},a\n")
    cases["no path column"] = (
        ["--dataset", "csv", "--manifest", m],
        r"nopath\.csv: no column 'path'.*--path_column",
    )
    m = tmp / "lonely.csv"
    m.write_text(f"path,label,site\n{good},a,x\n{good},b,x\n{good},a,y\n")
    cases["site too small"] = (
        ["--dataset", "csv", "--manifest", m],
        r"lonely\.csv line 4: site 'y' has 1 image",
    )
    folder = tmp / "folder"
    write_image(folder / "a" / "one", "png8", 12, 0)
    (folder / "b").mkdir()
    cases["empty class folder"] = (
        ["--dataset", "imagefolder", "--dataset_root", folder],
        r"folder/b: empty class folder",
    )
    try:
        from pydicom.data import get_testdata_file

        multi = get_testdata_file("rtdose.dcm", download=False)
        m = tmp / "multi.csv"
        m.write_text(f"path,label\n{good},a\n{multi},b\n")
        cases["multi-frame dicom"] = (
            ["--dataset", "csv", "--manifest", m],
            r"multi\.csv line 3: .*rtdose\.dcm: multi-frame DICOM \(15 frames\)",
        )
    except ImportError:
        pass
    return cases


BAD = (
    "corrupt",
    "missing",
    "unknown label",
    "label out of range",
    "no path column",
    "site too small",
    "empty class folder",
    "multi-frame dicom",
)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    cases = _bad_cases(tmp_path / "in")
    if case not in cases:
        pytest.skip("pydicom is not installed")
    args, needle = cases[case]
    db = tmp_path / "db"
    code, _, err = run_db(capsys, *args, "--database_root", db, *TINY)
    refused(code, err, needle)
    assert not db.exists()


def test_truncated_image_is_named_and_resume_finishes(tmp_path, capsys):
    manifest = make_manifest(tmp_path, per_class=3)
    victim = tmp_path / "img" / "south" / "malignant_2.png"  # the last rows
    victim = next(victim.parent.glob("malignant_2.*"))
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    db = tmp_path / "db"
    args = ["--dataset", "csv", "--manifest", manifest, "--database_root", db, *TINY]
    code, _, err = run_db(capsys, *args, "--batch_size", "2", "--chunk_size", "2")
    refused(code, err, r"malignant_2\.")
    assert not (db / "meta.json").exists() and (db / ".partial").is_dir()
    victim.write_bytes(whole)
    code, _, err = run_db(capsys, *args, "--batch_size", "2", "--chunk_size", "2", "--resume")
    assert code == 0, err
    assert (db / "meta.json").is_file() and not (db / ".partial").exists()


def test_by_site_refusals(tmp_path, capsys):
    manifest = make_manifest(tmp_path, per_class=1)  # 2 images per site
    db = tmp_path / "db"
    assert run_db(capsys, "--dataset", "csv", "--manifest", manifest, "--database_root", db,
                  *TINY)[0] == 0  # fmt: skip
    loaded = load_database(db)
    with pytest.raises(SplitError, match="site 'north' has too few images"):
        split_database(loaded, SplitConfig(split_method="by_site", test_data_frac=0.2))
    meta = json.loads((db / "meta.json").read_text())
    del meta["files"]["site_north"]["site"]
    (db / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SplitError, match="records no site for file 'site_north'"):
        split_database(load_database(db), SplitConfig(split_method="by_site"))


def test_encoder_mismatch_names_the_site_and_the_difference():
    meta = {"backbone": "vit", "weights_sha256": "aa", "preprocessing": {"data_config": 1}}
    same = {0: encoder_facts(meta), 1: encoder_facts(meta), 2: encoder_facts(meta)}
    assert encoder_mismatch(same) is None
    other = {**same, 2: encoder_facts({**meta, "weights_sha256": "bb"})}
    assert re.search(r"site\(s\) 2 .*another weights", encoder_mismatch(other))
    other = {**same, 1: encoder_facts({**meta, "backbone": "resnet"})}
    assert re.search(r"site\(s\) 1 .*another backbone .*resnet", encoder_mismatch(other))
    other = {**same, 0: encoder_facts({**meta, "preprocessing": {"data_config": 2}})}
    assert "another preprocessing" in encoder_mismatch(other)


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_folder_to_dpfedpft_by_site(tmp_path, capsys):
    manifest = make_manifest(tmp_path, per_class=6)
    db = tmp_path / "db"
    code, _, err = run_db(capsys, "--dataset", "csv", "--manifest", manifest,
                          "--database_root", db, *TINY)  # fmt: skip
    assert code == 0, err
    out = tmp_path / "run"
    code = main_module.main(
        [
            "--database_root",
            str(db),
            "--results_dir",
            str(out),
            "--method",
            "dpfedpft",
            "--split_method",
            "by_site",
            "--epsilon",
            "2",
            "--pft_covariance",
            "spherical",
            "--local_epochs",
            "5",
            "--quiet",
        ]  # fmt: skip
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["clients"]) == 2 and metrics["private"]


@pytest.mark.usefixtures("task_identity")
def test_flower_refuses_a_site_encoded_with_other_weights(gauss_db, tmp_path):
    """Each site encodes its own images: one whose database was made with another backbone's
    weights is refused at the first message (hello), naming the difference."""
    from fl.policy import PERMISSIVE, Refusal

    site = tmp_path / "site1"
    shutil.copytree(gauss_db, site)
    meta = json.loads((site / "meta.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (site / "meta.json").write_text(json.dumps(meta))
    write_json(
        gauss_db / "split.json", split_database(load_database(gauss_db), SplitConfig(n_clients=2))
    )
    shutil.copy(gauss_db / "split.json", site / "split.json")
    # permissive policies (the run's delta is the paper's 1e-4): only the encoders differ
    nodes = [
        hospital_node(gauss_db, gauss_db / "split.json", 0, **SEEDED, **PERMISSIVE),
        hospital_node(site, site / "split.json", 1, **SEEDED, **PERMISSIVE),
    ]
    with pytest.raises(Refusal, match=r"encoded their database with another weights .*0000"):
        run_in_process(gauss_db, tmp_path / "r", DPCVAE, nodes)
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_dicom_without_pydicom_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    dcm = tmp_path / "scan.dcm"
    dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "m.csv").write_text(f"path,label\n{dcm},a\n{dcm},b\n")
    db = tmp_path / "db"
    code, _, err = run_db(capsys, "--dataset", "csv", "--manifest", tmp_path / "m.csv",
                          "--database_root", db, *TINY)  # fmt: skip
    refused(code, err, r"m\.csv line 2: .*scan\.dcm: reading DICOM needs pydicom")
    assert not db.exists()
