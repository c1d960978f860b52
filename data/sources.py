"""Image sources for `create_db.py`: `open_source` opens any dataset by name (MedMNIST 2D in
medmnist_source.py, Camelyon17-WILDS in camelyon_source.py, a site's own images in own_data.py); the
Fashion-MNIST IDX files and digits are here. What a source is: source_base.py.

A source lists the database files to write, with their labels and metadata known up front, and a
reader per file that returns its images in order, a batch at a time: uint8 arrays (H x W or
H x W x 3) or the bytes of an encoded image file. Nothing is loaded whole: MedMNIST arrays are
memory-mapped (members stored uncompressed) or inflated sequentially (compressed members), and
Camelyon17 reads only the patches it sampled.
"""

from __future__ import annotations

import gzip
import struct
import urllib.request
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.camelyon_source import camelyon_dir, download_camelyon17, open_camelyon17
from data.medmnist_source import (
    MEDMNIST_SIZES,
    check_medmnist_flag,
    download_medmnist,
    medmnist_path,
    open_medmnist,
)
from data.source_base import (
    OTHER_DATASETS,
    OWN_DATASETS,
    ArrayReader,
    OutputFile,
    Source,
    SourceError,
    parse_s_frac,
)

if TYPE_CHECKING:
    from data.manifest import Columns

# Fashion-MNIST: the four official IDX files, and where Debian's `dataset-fashion-mnist` puts them.
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


# ----------------------------------------------------------------------------- readers


# ----------------------------------------------------------------------------- MedMNIST


# ----------------------------------------------------------------------------- Camelyon17


# ----------------------------------------------------------------------------- Fashion-MNIST


def default_dataset_root(dataset: str) -> str:
    """`--dataset_root` when none is given: Debian's Fashion-MNIST folder for fashionmnist when it
    exists (`apt-get install dataset-fashion-mnist`), else `datasets`."""
    if dataset.lower() == "fashionmnist" and Path(FASHION_DEBIAN_ROOT).is_dir():
        return FASHION_DEBIAN_ROOT
    return "datasets"


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (gzipped, or plain when `path` has no .gz suffix): magic
    0x0000 0x08 <ndim>, then ndim big-endian uint32 sizes, then the bytes."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
                raise SourceError(
                    f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) "
                    f"(magic {head.hex() or 'missing'})"
                )
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = f.read()
    except (OSError, EOFError, struct.error, zlib.error) as err:
        raise SourceError(f"{path}: not a readable IDX file ({err})") from None
    if len(data) != int(np.prod(shape)):
        raise SourceError(
            f"{path}: {len(data)} data bytes, the header announces {int(np.prod(shape))} {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def download_fashionmnist(root: str | Path) -> None:
    """Download the four official Fashion-MNIST files (about 30 MB) into `root`."""
    Path(root).mkdir(parents=True, exist_ok=True)
    for names in FASHION_FILES.values():
        for name in names:
            target = Path(root) / name
            if not target.is_file():
                tmp = target.with_name(f".{name}.part")
                urllib.request.urlretrieve(FASHION_URL + name, tmp)
                tmp.replace(target)


def fashion_counts(sizes: dict[str, int], s_frac: float) -> dict[str, int]:
    """Images to keep per official split: a fraction of each, or a total count shared in
    proportion to the splits' sizes (largest remainders get the rest)."""
    s_frac = parse_s_frac(s_frac)
    if s_frac <= 1:
        return {k: max(1, int(round(s_frac * n))) for k, n in sizes.items()}
    total = int(s_frac)
    if total > sum(sizes.values()):
        raise SourceError(f"--s_frac {total}: the dataset has {sum(sizes.values())} images")
    share = {k: total * n / sum(sizes.values()) for k, n in sizes.items()}
    counts = {k: int(v) for k, v in share.items()}
    for k in sorted(share, key=lambda k: counts[k] - share[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def open_fashionmnist(root: str | Path, s_frac: float = 1.0, seed: int = 202502) -> Source:
    """Fashion-MNIST from its four official IDX files: files `train` (60,000) and `test`
    (10,000), 28 px grayscale, 10 classes. `s_frac` keeps a seeded uniform subset of each file
    (a fraction, or a total count shared in proportion); metadata: official split and index."""
    root = Path(root)
    arrays = {}
    for split, (images, labels) in FASHION_FILES.items():
        if not (root / images).is_file():
            raise SourceError(
                f"--dataset_root {root}: {images} not found (the official Fashion-MNIST files; "
                "`apt-get install dataset-fashion-mnist` puts them in "
                f"{FASHION_DEBIAN_ROOT}, or pass --download)"
            )
        x, y = read_idx(root / images, 3), read_idx(root / labels, 1)
        if len(x) != len(y):
            raise SourceError(f"{root / labels}: {len(y)} labels for {len(x)} images")
        if len(y) and y.max() >= len(FASHION_CLASSES):
            raise SourceError(f"{root / labels}: label {y.max()} outside 0..9")
        arrays[split] = (x, y.astype(np.int64))
    counts = fashion_counts({k: len(v[1]) for k, v in arrays.items()}, s_frac)
    files = []
    for code, (split, (x, y)) in enumerate(arrays.items()):
        rng = np.random.default_rng([seed, code])
        keep = np.sort(rng.choice(len(y), size=counts[split], replace=False))
        meta = np.stack([np.full(len(keep), code), keep], axis=1).astype(np.int64)
        files.append(
            OutputFile(
                name=split,
                labels=y[keep],
                metadata=meta,
                metadata_fields=("split", "index"),
                reader=ArrayReader(np.ascontiguousarray(x[keep])),
                info={"available": len(y)},
            )
        )
    return Source(
        dataset="fashionmnist",
        task="multi-class",
        classes=list(FASHION_CLASSES),
        source_size=28,
        files=files,
        info={
            "source_file": str(root.resolve()),
            "sampling": "uniform without replacement within each official split, seeded "
            "(seed, split); metadata split 0 = train, 1 = test",
            "s_frac": s_frac,
        },
    )


# ----------------------------------------------------------------------------- digits


def open_digits() -> Source:
    """scikit-learn's bundled digits: 1,797 real 8x8 images, 10 classes, one file `all`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    n = len(images)
    return Source(
        dataset="digits",
        task="multi-class",
        classes=[str(i) for i in range(10)],
        source_size=8,
        files=[
            OutputFile(
                name="all",
                labels=digits.target.astype(np.int64),
                metadata=np.arange(n, dtype=np.int64)[:, None],
                metadata_fields=("index",),
                reader=ArrayReader(images),
            )
        ],
        info={"source_file": "sklearn.datasets.load_digits"},
    )


# ----------------------------------------------------------------------------- dispatch


def open_source(
    *,
    dataset: str,
    dataset_root: str | Path,
    size: int | None = None,
    s_frac: float | None = None,
    seed: int = 202502,
    download: bool = False,
    manifest: str | Path | None = None,
    columns: Columns | None = None,
    classes: str | None = None,
) -> Source:
    """Open any supported dataset by its `--dataset` name; SourceError on bad input.
    `manifest`, `columns` (a data.manifest.Columns) and `classes` are for imagefolder/csv.

    Args:
        dataset: the `--dataset` name.
        dataset_root: where its files are.
        size: MedMNIST's image size (None: the default).
        s_frac: the fraction of images sampled (camelyon17, fashionmnist; None: all).
        seed: the seed of that sampling.
        download: whether to download missing files (the public datasets).
        manifest: a CSV manifest (csv only).
        columns: the manifest's column names (None: the defaults).
        classes: the class names in order (imagefolder, csv; None: as found).
    """
    dataset = dataset.lower()
    if size is not None and dataset in OTHER_DATASETS:
        raise SourceError(f"--size applies to MedMNIST datasets only, not to {dataset}")
    if s_frac is not None and dataset not in ("camelyon17", "fashionmnist"):
        raise SourceError(f"--s_frac applies to camelyon17 and fashionmnist only, not to {dataset}")
    if dataset in OWN_DATASETS:
        from data.manifest import Columns
        from data.own_data import open_own_data

        if download:
            raise SourceError(f"--download does not apply to {dataset} (your own images)")
        if manifest is not None and dataset != "csv":
            raise SourceError(f"--manifest applies to --dataset csv only, not to {dataset}")
        return open_own_data(
            dataset,
            dataset_root,
            manifest=manifest,
            columns=columns if columns is not None else Columns(),
            classes=classes,
        )
    if manifest is not None or classes is not None:
        raise SourceError(f"--manifest and --classes apply to imagefolder and csv, not {dataset}")
    if dataset == "digits":
        return open_digits()
    if dataset == "fashionmnist":
        s_frac = parse_s_frac(1.0 if s_frac is None else s_frac)
        if download and not (Path(dataset_root) / FASHION_FILES["train"][0]).is_file():
            download_fashionmnist(dataset_root)
        return open_fashionmnist(dataset_root, s_frac, seed)
    if dataset == "camelyon17":
        s_frac = parse_s_frac(1.0 if s_frac is None else s_frac)
        if download and not (camelyon_dir(dataset_root) / "metadata.csv").is_file():
            download_camelyon17(dataset_root)
        return open_camelyon17(dataset_root, s_frac, seed)
    size = 224 if size is None else size
    check_medmnist_flag(dataset)
    if size not in MEDMNIST_SIZES:
        raise SourceError(
            f"--size {size}: MedMNIST sizes are {', '.join(map(str, MEDMNIST_SIZES))}"
        )
    if download and not medmnist_path(dataset_root, dataset, size).is_file():
        Path(dataset_root).mkdir(parents=True, exist_ok=True)
        download_medmnist(dataset_root, dataset, size)
    return open_medmnist(dataset_root, dataset, size)
