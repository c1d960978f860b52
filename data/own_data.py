"""A hospital's own images for `create_db.py`: an image folder or a CSV manifest.

- `--dataset imagefolder --dataset_root ROOT`: `ROOT/<class>/<image>` (torchvision's ImageFolder
  convention: class names are the folder names, sorted; images may sit in sub-folders), or
  `ROOT/train/<class>/...` and `ROOT/test/<class>/...`, which set the official split. Files with
  an image suffix (PNG, JPEG, TIFF, BMP, GIF, WebP, DICOM) are read; other files are ignored.
- `--dataset csv --manifest FILE`: one row per image with a path (relative to the manifest's
  folder, or absolute) and a label (a class name, or an integer class index), optionally a site
  and a split (train/test). A manifest with sites gives one database file per site,
  `site_<name>` (meta.json records each file's `site`), which `--split_method by_site` makes one
  client each.

Labels: `--classes a,b,c` fixes the class names and their order; a name not in it, or an integer
outside 0..len-1, is refused. Without it, integer labels name classes 0..max, and other labels
are sorted class names. Every file is checked (present, an image Pillow or pydicom can open,
single-frame) before anything is encoded; the first problem is one SourceError naming the file
and the manifest line. The manifest's columns and rows are read by data/manifest.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.images import (
    DICOM_SUFFIXES,
    IMAGE_CONVERSION,
    check_dicom_decodes,
    dicom_transfer_syntax,
    is_dicom,
    read_dicom_header,
)
from data.manifest import DEFAULT_COLUMNS, SPLITS, Columns, Row, manifest_rows
from data.own_checks import class_warnings
from data.patients import PATIENT_FIELD, consecutive_ids, patient_keys
from data.source_base import FileBytesReader, OutputFile, Source, SourceError

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".webp",
    *DICOM_SUFFIXES,
)
METADATA_FIELDS = ("row", "split")  # row: manifest data row (or file order); split: 0/1, -1 none
SITE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
MIN_SITE_IMAGES = 2  # one train and one test image at least


def parse_classes(text: str | None) -> list[str] | None:
    """`--classes a,b,c` as a list (None when not given); refuses empty or repeated names."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not names or any(not c for c in names):
        raise SourceError(f"--classes {text!r}: give comma-separated, non-empty class names")
    if len(set(names)) != len(names):
        raise SourceError(f"--classes {text!r}: a class name is repeated")
    return names


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


def resolve_labels(rows: list[Row], classes: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and the integer label of every row (see the module's rules)."""
    texts = [r.label for r in rows]
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        labels = []
        for r in rows:
            if r.label in index:
                labels.append(index[r.label])
            elif _is_int(r.label) and 0 <= int(r.label) < len(classes):
                labels.append(int(r.label))
            else:
                raise SourceError(
                    f"{r.where}: label {r.label!r} is not one of --classes "
                    f"({', '.join(classes)}) nor an index 0..{len(classes) - 1}"
                )
        return list(classes), np.asarray(labels, dtype=np.int64)
    if all(_is_int(t) for t in texts):
        values = [int(t) for t in texts]
        bad = next((r for r, v in zip(rows, values) if v < 0), None)
        if bad is not None:
            raise SourceError(f"{bad.where}: label {bad.label} is negative; labels are 0..n-1")
        n = max(values) + 1
        return [str(i) for i in range(n)], np.asarray(values, dtype=np.int64)
    names = sorted(set(texts))
    index = {c: i for i, c in enumerate(names)}
    return names, np.asarray([index[t] for t in texts], dtype=np.int64)


def check_image_file(path: Path, where: str) -> None:
    """Refuse a missing file, one that is not an image, or a multi-frame DICOM."""
    if not path.is_file():
        raise SourceError(f"{where}: image file {path} not found")
    try:
        if path.suffix.lower() in DICOM_SUFFIXES:
            read_dicom_header(path)
            return
        with path.open("rb") as fh:
            head = fh.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            read_dicom_header(path)
            return
        with Image.open(path) as img:
            img.size  # noqa: B018 (the header is parsed on open)
    except ValueError as err:  # read_dicom_header's messages name the file
        raise SourceError(f"{where}: {err}" if str(path) != where else str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = " ".join(str(err).replace(f"'{path}'", "").replace(str(path), "").split())
        named = f"{where}: {path}" if str(path) != where else str(path)  # the file named once
        raise SourceError(f"{named} is not a readable image ({reason})") from None


def header_pass(rows: list[Row]) -> None:
    """Check every file (`check_image_file`), then decode one DICOM file per transfer syntax,
    so that a compression nothing installed decodes is refused here, before any encoding."""
    first: dict[tuple[str, str], Row] = {}
    for r in rows:
        check_image_file(r.path, r.where)
        with r.path.open("rb") as fh:
            dicom = is_dicom(fh.read(132), r.path)
        syntax = dicom_transfer_syntax(r.path) if dicom else None
        if syntax is not None:
            first.setdefault(syntax, r)
    for syntax, r in first.items():
        try:
            check_dicom_decodes(r.path, syntax)
        except ValueError as err:  # its message names the file
            raise SourceError(f"{r.where}: {err}" if str(r.path) != r.where else str(err)) from None


# ----------------------------------------------------------------------------- inputs


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def imagefolder_rows(root: str | Path) -> list[Row]:
    """The images of `ROOT/<class>/...` or `ROOT/{train,test}/<class>/...`, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"--dataset_root {root}: folder not found")
    top = _class_dirs(root)
    split_layout = (
        bool(top) and {p.name for p in top} <= set(SPLITS) and "train" in {p.name for p in top}
    )
    parts = [(root / s, code) for code, s in enumerate(SPLITS)] if split_layout else [(root, -1)]
    rows: list[Row] = []
    for folder, code in parts:
        if not folder.is_dir():
            continue
        classes = _class_dirs(folder)
        if not classes:
            raise SourceError(
                f"--dataset_root {root}: {folder} holds no class folder (expected "
                f"{folder}/<class>/<image>)"
            )
        for cls in classes:
            images = _images_under(cls)
            if not images:
                raise SourceError(
                    f"{cls}: empty class folder (no {', '.join(IMAGE_SUFFIXES)} file in it)"
                )
            rows.extend(Row(p, cls.name, None, code, str(p)) for p in images)
    return rows


# ----------------------------------------------------------------------------- source


def site_file_name(site: str) -> str:
    """The database file of a site: `site_<name>`, characters other than A-Z a-z 0-9 _ . - as _."""
    return "site_" + SITE_NAME.sub("_", site)


def _group(rows: list[Row]) -> list[tuple[str, list[int], dict]]:
    """(file name, row indices, info) of each database file."""
    if rows and rows[0].site is not None:
        by_name: dict[str, list[int]] = {}
        sites: dict[str, str] = {}
        for i, r in enumerate(rows):
            site = r.site or ""  # a manifest's rows name sites all or none (read_manifest)
            name = site_file_name(site)
            if sites.setdefault(name, site) != site:
                raise SourceError(
                    f"{r.where}: sites {sites[name]!r} and {r.site!r} both become file "
                    f"{name!r}; rename one"
                )
            by_name.setdefault(name, []).append(i)
        out = []
        for name in sorted(by_name):
            idx = by_name[name]
            if len(idx) < MIN_SITE_IMAGES:
                raise SourceError(
                    f"{rows[idx[0]].where}: site {sites[name]!r} has {len(idx)} image; a site "
                    f"needs at least {MIN_SITE_IMAGES} to split into train and test"
                )
            out.append((name, idx, {"site": sites[name]}))
        return out
    if any(r.split >= 0 for r in rows):
        return [
            (s, [i for i, r in enumerate(rows) if r.split == code], {})
            for code, s in enumerate(SPLITS)
            if any(r.split == code for r in rows)
        ]
    return [("all", list(range(len(rows))), {})]


def open_own_data(
    dataset: str,
    dataset_root: str | Path | None = None,
    manifest: str | Path | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    classes: str | list[str] | None = None,
) -> Source:
    """Open `imagefolder` (under `dataset_root`) or `csv` (`manifest`); SourceError on bad input."""
    if isinstance(classes, str) or classes is None:
        classes = parse_classes(classes)
    if dataset == "imagefolder":
        if dataset_root is None:
            raise SourceError("--dataset imagefolder needs --dataset_root ROOT (ROOT/<class>/...)")
        rows = imagefolder_rows(dataset_root)
        source_file = Path(dataset_root).resolve()
    else:
        if manifest is None:
            raise SourceError("--dataset csv needs --manifest FILE")
        rows = manifest_rows(manifest, columns)
        source_file = Path(manifest).resolve()
    names, labels = resolve_labels(rows, classes)
    integer = all(_is_int(r.label) for r in rows)
    label_warnings = class_warnings(names, labels, [r.where for r in rows], integer, source_file)
    header_pass(rows)
    keys = patient_keys(rows, columns.key_file)
    patients = None if keys is None else consecutive_ids(keys)
    files = []
    for name, idx, info in _group(rows):
        meta = np.array([[i, rows[i].split] for i in idx], dtype=np.int64).reshape(-1, 2)
        fields: tuple[str, ...] = METADATA_FIELDS
        if patients is not None:
            meta = np.concatenate([meta, patients[idx, None]], axis=1)
            fields = (*METADATA_FIELDS, PATIENT_FIELD)
        files.append(
            OutputFile(
                name=name,
                labels=labels[idx],
                metadata=meta,
                metadata_fields=fields,
                reader=FileBytesReader([rows[i].path for i in idx]),
                info=info,
            )
        )
    info = {
        "source_file": str(source_file),
        "image_conversion": IMAGE_CONVERSION,
        "metadata": "row: the image's manifest data row (imagefolder: its place in sorted file "
        "order); split: 0 train, 1 test, -1 not given"
        + ("" if patients is None else "; patient: the patient's id (data/patients.py)"),
    }
    sites = [f.info["site"] for f in files if "site" in f.info]
    if sites:
        info["sites"] = {f.name: f.info["site"] for f in files}
    for message in label_warnings:  # after every refusal: a refused input prints one line
        print(f"warning: {message}", file=sys.stderr)
    return Source(
        dataset=dataset,
        task="binary-class" if len(names) == 2 else "multi-class",
        classes=names,
        source_size=0,  # images of any size; each is resized to the backbone's input
        files=files,
        info=info,
    )
