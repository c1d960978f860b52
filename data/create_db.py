"""Stage 1: encode a dataset's images with a frozen timm backbone into an embedding database.

    python data/create_db.py --dataset organsmnist --dataset_root datasets \\
        --database_root databases/organsmnist_224_dinov2_b --weights FILE

Writes `<database_root>/meta.json` and one `.npz` per file (see data/database.py). Work is done
in chunks saved under `<database_root>/.partial/`, so an interrupted run continues with
`--resume`; the chunks are removed once the database is complete. Bad input exits with status 2
and one line on stderr, before anything is written; an image that cannot be decoded during
encoding also exits with status 2, naming it, and leaves the finished chunks for `--resume`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from data.backbone import DEFAULT_BACKBONE, BackboneError, create_backbone, preprocessing
from data.database import (
    META_FILE,
    DatabaseError,
    load_meta,
    save_embedding_file,
    summary_table,
    write_meta,
)
from data.encoding import encode_source, encoding_plan
from data.images import name_dicom_warnings
from data.manifest import Columns
from data.medmnist_source import medmnist_flags
from data.patients import PATIENT_COLUMN_HELP, files_patient_facts, key_path
from data.source_base import OWN_DATASETS, SourceError
from data.sources import default_dataset_root, open_source
from data.split_config import SplitConfig
from utils.cli import OutputError, Parser, check_output, flag_name
from utils.io import read_json, write_json
from utils.provenance import versions

PARTIAL_DIR = ".partial"
PLAN_FILE = "plan.json"


class UsageError(ValueError):
    """Bad command-line input that is not about a dataset or a backbone."""


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every flag is explained in --help."""
    cpus = os.cpu_count() or 1
    p = Parser(
        prog="create_db.py",
        description="Encode a dataset's images with a frozen timm backbone into an embedding "
        "database (meta.json + one .npz per file) that every later stage reads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="a 2D single-label MedMNIST flag (" + ", ".join(medmnist_flags()) + "), "
        "'camelyon17' (Camelyon17-WILDS, one file per hospital), 'fashionmnist' (the four "
        "official Fashion-MNIST IDX files: 70,000 28 px grayscale images, 10 classes) or "
        "'digits' (scikit-learn's bundled 8x8 digits, no download), or your own images: "
        "'imagefolder' (--dataset_root ROOT with ROOT/<class>/<image> or "
        "ROOT/{train,test}/<class>/<image>) or 'csv' (--manifest FILE); PNG, JPEG, TIFF, 8/16-bit, "
        "DICOM",
    )
    p.add_argument(
        "--dataset_root",
        default=None,
        help="folder holding <flag>[_<size>].npz (MedMNIST), camelyon17_v1.0/ (WILDS layout) or "
        "train-images-idx3-ubyte.gz and the three other IDX files (Fashion-MNIST), or your "
        "class folders (imagefolder); unused for digits and csv. Default: "
        "/usr/share/datasets/fashion-mnist for fashionmnist when it exists "
        "(Debian's dataset-fashion-mnist package), else datasets",
    )
    own = p.add_argument_group(
        "own images (--dataset imagefolder or csv; see docs/own-data.md)",
    )
    own.add_argument(
        "--manifest",
        metavar="FILE",
        default=None,
        help="--dataset csv: a CSV with one row per image: path (relative to the manifest's "
        "folder, or absolute), label (class name or integer index), and optionally site (one "
        "database file site_<name> per site, for "
        f"{flag_name(SplitConfig, 'split_method')} by_site) and split (train/test)",
    )
    own.add_argument("--path_column", default="path", help="the manifest's image path column")
    own.add_argument("--label_column", default="label", help="the manifest's label column")
    own.add_argument(
        "--site_column", default=None, help="the manifest's site column (default: site, if any)"
    )
    own.add_argument(
        "--split_column",
        default=None,
        help="the manifest's train/test column (default: split, if any)",
    )
    own.add_argument("--patient_column", default=None, help=PATIENT_COLUMN_HELP)
    own.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="imagefolder/csv: the class names, in order; a label not among them (or an integer "
        "outside 0..n-1) is refused. Default: integer labels 0..max, else the sorted names",
    )
    p.add_argument(
        "--database_root",
        required=True,
        help="output folder; refused if it already holds a database, unless --overwrite",
    )
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="any timm model name")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--weights",
        metavar="FILE",
        help="local checkpoint (.pth/.pt/.bin via torch.load(weights_only=True), or "
        ".safetensors); loaded by name when its names are timm's, else by order when every "
        "shape matches one to one. Without it the weights come from the Hugging Face hub",
    )
    weights.add_argument(
        "--random_init",
        action="store_true",
        help="random weights seeded by --seed (tests and smoke runs; recorded in meta.json)",
    )
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--seed",
        type=int,
        default=202502,
        help="seed of the Camelyon17 and Fashion-MNIST sampling (--s_frac) and of --random_init",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="MedMNIST image size: 28, 64, 128 or 224 (default 224); MedMNIST only",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda")
    p.add_argument(
        "--num_workers",
        type=int,
        default=min(4, cpus),
        help="threads that decode, resize and crop images while the model runs (0: none)",
    )
    p.add_argument(
        "--s_frac",
        type=float,
        default=None,
        help="Camelyon17: a fraction in (0, 1] of each hospital, or a total count > 1 "
        "split equally between hospitals (the paper: 4600, 920 per hospital); drawn uniformly "
        "within each hospital, seeded by --seed; only these patches are read. Fashion-MNIST: a "
        "fraction of each official split, or a total count shared in proportion to them "
        "(e.g. 25000: 21,429 train + 3,571 test), seeded by --seed. Default: all",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the dataset into --dataset_root when it is missing (off by default)",
    )
    p.add_argument(
        "--chunk_size",
        type=int,
        default=4096,
        help="images per resumable chunk (rounded up to a multiple of --batch_size)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its finished chunks (same flags required); "
        "a database already complete with the same flags is left as it is",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a database (or interrupted run) already in --database_root",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.num_workers < 0:
        raise UsageError(f"--num_workers {args.num_workers}: must be 0 or more")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk_size {args.chunk_size}: must be at least 1")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    root = Path(args.database_root)
    check_output(root, "--database_root", folder=True)
    if (root / META_FILE).exists() and not (args.overwrite or args.resume):
        raise UsageError(
            f"--database_root {root}: already holds a database ({META_FILE}); "
            "pass --overwrite to replace it"
        )
    if (root / PARTIAL_DIR).exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"--database_root {root}: holds an interrupted run ({root / PARTIAL_DIR}); "
            "pass --resume to continue it or --overwrite to start over"
        )


def _remove_database(root: Path) -> None:
    """Remove what a previous create_db run wrote in `root` (and nothing else)."""
    meta_path = root / META_FILE
    names = []
    if meta_path.exists():
        try:
            names = list(load_meta(root)["files"])
        except DatabaseError:
            names = []
        meta_path.unlink()
    for name in names:
        (root / f"{name}.npz").unlink(missing_ok=True)
    shutil.rmtree(root / PARTIAL_DIR, ignore_errors=True)


def _check_same_plan(old: dict, plan: dict, what: str) -> None:
    old = old if isinstance(old, dict) else {}
    diff = [k for k in plan if old.get(k) != plan[k]]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} vs {plan[k]!r}" for k in diff[:3])
        raise UsageError(
            f"--resume: {what} used other settings ({shown}); "
            "rerun with its flags or pass --overwrite"
        )


def run(args: argparse.Namespace, command: list[str], started: float) -> dict:
    """Validate everything, then encode and write the database; return its meta.json."""
    _check_args(args)
    root = Path(args.database_root)
    own = args.dataset.lower() in OWN_DATASETS
    if args.dataset_root is None and not own:
        args.dataset_root = default_dataset_root(args.dataset)
    columns = Columns(
        path=args.path_column,
        label=args.label_column,
        site=args.site_column or "site",
        split=args.split_column or "split",
        explicit=tuple(
            flag
            for flag, value in (
                ("--site_column", args.site_column),
                ("--split_column", args.split_column),
                ("--patient_column", args.patient_column),
            )
            if value is not None
        ),
        patient=args.patient_column or "patient",
        key_file=str(key_path(root)),
    )
    if not own and (args.manifest or args.classes or columns.explicit):
        raise UsageError(
            "--manifest, --classes and the column flags apply to --dataset imagefolder or csv"
        )
    source = open_source(
        dataset=args.dataset,
        dataset_root=args.dataset_root,
        size=args.size,
        s_frac=args.s_frac,
        seed=args.seed,
        download=args.download,
        manifest=args.manifest,
        columns=columns,
        classes=args.classes,
    )
    with source:
        backbone = create_backbone(
            args.backbone,
            weights=args.weights,
            random_init=args.random_init,
            device=args.device,
            seed=args.seed,
        )
        chunk_rows = -(-args.chunk_size // args.batch_size) * args.batch_size
        plan = encoding_plan(args, source, backbone, chunk_rows)
        work = root / PARTIAL_DIR
        if args.overwrite:
            _remove_database(root)
        if args.resume and (root / META_FILE).is_file():
            # A finished database made with the same settings: nothing to do.
            meta = load_meta(root)
            _check_same_plan(meta.get("plan", {}), plan, f"{root} already holds a database that")
            print(f"{root}: already complete with these settings; nothing to do", file=sys.stderr)
            return meta
        if args.resume and (work / PLAN_FILE).is_file():
            try:
                old_plan = read_json(work / PLAN_FILE)
            except ValueError as err:
                raise DatabaseError(f"{err}; rerun with --overwrite") from None
            _check_same_plan(old_plan, plan, f"the interrupted run in {work}")
        elif work.exists():
            shutil.rmtree(work)
        write_json(work / PLAN_FILE, plan)

        t0 = time.time()
        embeddings = encode_source(
            source=source,
            backbone=backbone,
            work=work,
            batch_size=args.batch_size,
            chunk_rows=chunk_rows,
            num_workers=args.num_workers,
            progress=not args.quiet,
        )
        encode_seconds = time.time() - t0
        files = {}
        for f in source.files:
            save_embedding_file(
                root / f"{f.name}.npz", embeddings[f.name], f.labels, f.metadata, f.metadata_fields
            )
            counts = np.bincount(f.labels, minlength=len(source.classes))
            files[f.name] = {"n": len(f), "class_counts": counts.tolist(), **f.info}

    meta = {
        "dataset": source.dataset,
        "task": source.task,
        "classes": source.classes,
        "n_classes": len(source.classes),
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "weights_loaded_by": backbone.weights_loaded_by,
        "embedding_dim": backbone.embedding_dim,
        "image_size": int(backbone.image_size[0]),
        "source_size": source.source_size,
        "data_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()
        },
        "preprocessing": preprocessing(backbone),
        "files": files,
        "patients": files_patient_facts(source.files),
        "seed": args.seed,
        "s_frac": source.info.get("s_frac", args.s_frac),
        "batch_size": args.batch_size,
        "source": source.info,
        "command": command,
        "versions": versions(),
        "device": str(backbone.device),
        "encode_seconds": round(encode_seconds, 3),
        "elapsed_seconds": round(time.time() - started, 3),
        "plan": plan,
    }
    write_meta(root, meta)
    shutil.rmtree(work, ignore_errors=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad input)."""
    started = time.time()
    args = build_parser().parse_args(argv)
    name_dicom_warnings()
    command = list(sys.argv) if argv is None else ["data/create_db.py", *argv]
    try:
        meta = run(args, command, started)
    except (UsageError, SourceError, BackboneError, DatabaseError, OutputError) as err:
        print(f"create_db.py: error: {err}", file=sys.stderr)
        return 2
    print(summary_table(meta, Path(args.database_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
