"""A hospital's own images without surprises (issue 33, items 2-6): fewer than two classes is
refused, likely label mistakes are warned about, a DICOM compression that does not decode here
is refused in the header pass, a semicolon manifest works, every message names its file once,
on one line (items 2-6); docs/own-data.md's image-folder example runs as written (item 8)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers.images import TINY_BACKBONE, make_site_manifest, write_gray_png
from helpers.paths import REPO

import data.create_db as create_db
import main as main_module
from data.database import load_database
from data.own_checks import detect_delimiter
from utils.collect import main as collect_main

ENCODE = ["--backbone", TINY_BACKBONE, "--random_init", "--quiet", "--num_workers", "0"]


def create(capsys, tmp_path, *args) -> tuple[int, str, Path]:
    db = tmp_path / "db"
    code = create_db.main([*map(str, args), "--database_root", str(db), *ENCODE])
    return code, capsys.readouterr().err, db


def refused(code: int, err: str, needle: str, db: Path) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(needle, err), err
    assert not db.exists()


def manifest(tmp_path: Path, rows: list[tuple[str, str]], name: str = "m.csv") -> Path:
    """A manifest of (label, file name) rows, each file a tiny PNG next to it."""
    lines = ["path,label"]
    for i, (label, file) in enumerate(rows):
        write_gray_png(tmp_path / file, seed=i)
        lines.append(f"{file},{label}")
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / name


def test_a_one_class_folder_is_refused_naming_the_folder(tmp_path, capsys):
    root = tmp_path / "folder"
    for i in range(3):
        write_gray_png(root / "benign" / f"{i}.png", seed=i)
    code, err, db = create(capsys, tmp_path, "--dataset", "imagefolder", "--dataset_root", root)
    refused(code, err, r"folder: 1 class with images \('benign'\); .*at least two classes", db)


def test_label_mistakes_are_warned_about(tmp_path, capsys):
    rows = [("ct", f"a{i}.png") for i in range(3)] + [("CT", "b.png"), ("mr", "c.png")]
    rows.append(("mr", "d.png"))
    code, err, db = create(capsys, tmp_path, "--dataset", "csv", "--manifest",
                           manifest(tmp_path, rows))  # fmt: skip
    assert code == 0, err
    assert re.search(r"warning: .*m\.csv: class 'CT' has 1 image \(.*m\.csv line 5\)", err)
    assert re.search(r"class names 'CT' and 'ct' differ only in case or spaces", err)
    assert "'mr' has" not in err and load_database(db).classes == ["CT", "ct", "mr"]
    gap = [("0", "e.png"), ("0", "f.png"), ("2", "g.png"), ("2", "h.png")]
    code, err, db = create(capsys, tmp_path / "gap", "--dataset", "csv", "--manifest",
                           manifest(tmp_path / "gap", gap))  # fmt: skip
    assert code == 0, err
    assert re.search(r"no image has label 1: integer labels .* class 1 empty", err)
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture
def dicoms(tmp_path):
    """CT_small.dcm (pydicom's bundled scan) and copies as RLE Lossless and deflated, and the
    bundled 12-bit JPEG Extended file, which no installed plugin decodes."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    ct = Path(get_testdata_file("CT_small.dcm", download=False))
    out = {"ct": tmp_path / "ct.dcm", "jpeg_extended": tmp_path / "jpeg_extended.dcm"}
    shutil.copy(ct, out["ct"])
    shutil.copy(get_testdata_file("JPEG-lossy.dcm", download=False), out["jpeg_extended"])
    ds = pydicom.dcmread(ct)
    ds.compress(RLELossless)
    out["rle"] = tmp_path / "rle.dcm"
    ds.save_as(out["rle"], enforce_file_format=True)
    ds = pydicom.dcmread(ct)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out["deflate"] = tmp_path / "deflate.dcm"
    ds.save_as(out["deflate"], enforce_file_format=True)
    return out


def test_a_dicom_compression_that_does_not_decode_is_refused_before_encoding(
    dicoms, tmp_path, capsys
):
    good = ["ct", "rle", "deflate", "ct"]
    lines = ["path,label"] + [f"{dicoms[k]},{'ab'[i % 2]}" for i, k in enumerate(good)]
    (tmp_path / "good.csv").write_text("\n".join(lines) + "\n")
    code, err, db = create(
        capsys, tmp_path, "--dataset", "csv", "--manifest", tmp_path / "good.csv"
    )
    assert code == 0, err
    lines.append(f"{dicoms['jpeg_extended']},b")
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    code, err, db = create(capsys, tmp_path / "x", "--dataset", "csv", "--manifest",
                           tmp_path / "bad.csv")  # fmt: skip
    refused(
        code,
        err,
        r"bad\.csv line 6: .*jpeg_extended\.dcm: DICOM transfer syntax 'JPEG Extended "
        r"\(Process 2 and 4\)' \(1\.2\.840\.10008\.1\.2\.4\.51\) does not decode here .*"
        r"pip install pylibjpeg pylibjpeg-libjpeg.*or export the images uncompressed",
        db,
    )


def test_pydicom_warnings_name_the_file(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    odd = get_testdata_file("SC_rgb_jpeg.dcm", download=False)  # explicit VR declared, implicit
    ct = get_testdata_file("CT_small.dcm", download=False)
    (tmp_path / "m.csv").write_text(f"path,label\n{odd},a\n{ct},b\n{odd},a\n{ct},b\n")
    code, err, _ = create(capsys, tmp_path, "--dataset", "csv", "--manifest", tmp_path / "m.csv")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "Expected explicit VR" in line]
    assert warned and all(line.startswith(f"warning: {odd}: ") for line in warned)
    assert len(warned) == len(set(warned)), err  # each once


def test_a_semicolon_manifest_works_and_another_delimiter_is_named(tmp_path, capsys):
    semi = make_site_manifest(tmp_path / "semi", {"north": 3, "south": 3}, delimiter=";")
    code, err, db = create(capsys, tmp_path / "semi", "--dataset", "csv", "--manifest", semi)
    assert code == 0, err
    assert list(load_database(db).meta["files"]) == ["site_north", "site_south"]
    assert detect_delimiter("path\tlabel\tsite") == "\t" and detect_delimiter("path") == ","
    pipe = tmp_path / "pipe.csv"
    pipe.write_text(semi.read_text().replace(";", "|"))
    code, err, db = create(capsys, tmp_path / "pipe", "--dataset", "csv", "--manifest", pipe)
    refused(code, err, r"pipe\.csv: no column 'path' .*read as comma-separated.*--path_column", db)


def test_a_text_file_named_png_is_named_once(tmp_path, capsys):
    root = tmp_path / "folder"
    for cls in ("a", "b"):
        write_gray_png(root / cls / "0.png")
    (root / "b" / "notes.png").write_text("not an image")
    code, err, db = create(capsys, tmp_path, "--dataset", "imagefolder", "--dataset_root", root)
    refused(code, err, r"notes\.png is not a readable image \(cannot identify image file\)", db)
    assert err.count("notes.png") == 1, err


def doc_commands(section: str) -> list[list[str]]:
    """The commands of the first bash block under `section` in docs/own-data.md, with the
    backbone replaced by the tests' tiny random one (no download, seconds)."""
    text = (REPO / "docs" / "own-data.md").read_text()
    block = text.split(section, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    block = re.sub(r'--weights "\$\(.*?\)"', "--random_init", block.replace("\\\n", " "))
    block = block.replace("tf_efficientnet_lite0", TINY_BACKBONE)
    lines = [line.strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_the_docs_folder_example_runs_as_written(tmp_path, capsys, monkeypatch):
    for cls in ("benign", "malignant"):
        for i in range(10):
            write_gray_png(tmp_path / "my_folder" / cls / f"{i}.png", seed=i + 10 * len(cls))
    monkeypatch.chdir(tmp_path)
    commands = doc_commands("## An image folder")
    assert [c[:2] for c in commands] == [
        ["python", "data/create_db.py"],
        ["python", "main.py"],
        ["python", "-m"],
    ]
    assert "--n_clients" in commands[1]
    assert create_db.main([*commands[0][2:], "--quiet", "--num_workers", "0"]) == 0
    assert main_module.main([*commands[1][2:], "--quiet"]) == 0
    assert commands[2][2] == "utils.collect" and collect_main(commands[2][3:]) == 0
    assert "| dpfedpft |" in (tmp_path / "results" / "my_folder" / "table.md").read_text()
