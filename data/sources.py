"""Image sources for `create_db.py`: MedMNIST 2D `.npz` files, Camelyon17-WILDS patches,
Fashion-MNIST IDX files, digits.

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
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

MEDMNIST_SIZES = (28, 64, 128, 224)
CAMELYON_DIR = "camelyon17_v1.0"
CAMELYON_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")
CAMELYON_METADATA = ("row", "patient", "node", "x_coord", "y_coord", "slide", "center", "split")
CAMELYON_PATCH_SIZE = 96
OTHER_DATASETS = ("camelyon17", "fashionmnist", "digits", "imagefolder", "csv")
OWN_DATASETS = ("imagefolder", "csv")  # a site's own images (data/own_data.py)
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


class SourceError(ValueError):
    """Bad dataset input; the message names the flag or the file and what is wrong."""


class Reader(Protocol):
    """Reads the images [lo, hi) of one database file; calls come in increasing order."""

    def __len__(self) -> int: ...

    def read(self, lo: int, hi: int) -> Sequence[np.ndarray | bytes]: ...

    def close(self) -> None: ...


@dataclass
class OutputFile:
    """One database file to write: its labels and metadata, and the reader of its images."""

    name: str
    labels: np.ndarray
    metadata: np.ndarray
    metadata_fields: tuple[str, ...]
    reader: Reader
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    """A dataset ready to encode: class names, task, native image size and the files to write."""

    dataset: str
    task: str
    classes: list[str]
    source_size: int
    files: list[OutputFile]
    info: dict = field(default_factory=dict)

    def close(self) -> None:
        for f in self.files:
            f.reader.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- readers


class ArrayReader:
    """Rows of an in-memory or memory-mapped array; `read` copies only the rows asked for."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.array(self.array[lo:hi])

    def close(self) -> None:
        mm = getattr(self.array, "_mmap", None)
        self.array = self.array[:0]
        if mm is not None:
            mm.close()


@dataclass(frozen=True)
class NpyMember:
    """Where and how an array is stored inside an `.npz` (zip) file."""

    path: Path
    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool
    header_len: int  # bytes of the .npy header at the start of the member
    data_offset: int  # byte offset of the array data in the .npz file (stored members only)


def npz_member(path: str | Path, key: str) -> NpyMember:
    """Read the header of array `key` in an `.npz` file without reading its data."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            raise SourceError(f"{path}: no array '{key}' in the file") from None
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise SourceError(f"{path}: array '{key}' has unsupported .npy version {version}")
            header_len = fh.tell()
        with path.open("rb") as raw:
            # The local file header is 30 bytes plus the name and extra fields (their lengths
            # at bytes 26-29); the member's bytes follow it.
            raw.seek(info.header_offset + 26)
            lengths = np.frombuffer(raw.read(4), dtype="<u2")
        local_data = info.header_offset + 30 + int(lengths[0]) + int(lengths[1])
    if fortran and len(shape) > 1:
        raise SourceError(f"{path}: array '{key}' is stored in Fortran order; expected C order")
    if dtype.hasobject:
        raise SourceError(f"{path}: array '{key}' holds Python objects; expected numbers")
    return NpyMember(
        path=path,
        key=key,
        dtype=dtype,
        shape=tuple(shape),
        compressed=info.compress_type != zipfile.ZIP_STORED,
        header_len=header_len,
        data_offset=local_data + header_len,
    )


class NpyStreamReader:
    """Rows of a compressed `.npz` member, inflated sequentially; only the rows read are in RAM."""

    def __init__(self, member: NpyMember):
        self.member = member
        self.row_bytes = int(np.prod(member.shape[1:], dtype=np.int64)) * member.dtype.itemsize
        self._zip: zipfile.ZipFile | None = None
        self._fh = None
        self.position = 0  # next row the stream will return

    def __len__(self) -> int:
        return self.member.shape[0]

    def _reopen(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.member.path)
        self._fh = self._zip.open(f"{self.member.key}.npy")
        self._read_exact(self.member.header_len)  # skip the .npy header
        self.position = 0

    def _read_exact(self, n_bytes: int) -> bytes:
        try:
            data = self._fh.read(n_bytes)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise SourceError(
                f"{self.member.path}: array '{self.member.key}' is corrupt ({err})"
            ) from None
        if len(data) != n_bytes:
            raise SourceError(f"{self.member.path}: array '{self.member.key}' is truncated")
        return data

    def read(self, lo: int, hi: int) -> np.ndarray:
        if not 0 <= lo <= hi <= len(self):
            raise IndexError(f"rows [{lo}, {hi}) out of range for {len(self)} rows")
        if self._fh is None or lo < self.position:
            self._reopen()
        skip = lo - self.position
        while skip > 0:  # discard rows before lo in bounded pieces
            step = min(skip, max(1, (64 << 20) // max(1, self.row_bytes)))
            self._read_exact(step * self.row_bytes)
            skip -= step
        data = self._read_exact((hi - lo) * self.row_bytes)
        self.position = hi
        return np.frombuffer(data, dtype=self.member.dtype).reshape(
            (hi - lo, *self.member.shape[1:])
        )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def open_npz_array(path: str | Path, key: str) -> ArrayReader | NpyStreamReader:
    """Reader of array `key` in an `.npz`: memory-mapped when stored, streamed when compressed."""
    member = npz_member(path, key)
    if member.compressed:
        return NpyStreamReader(member)
    if member.shape[0] == 0:
        return ArrayReader(np.zeros(member.shape, dtype=member.dtype))
    array = np.memmap(
        member.path, dtype=member.dtype, mode="r", offset=member.data_offset, shape=member.shape
    )
    return ArrayReader(array)


class ConcatReader:
    """Several readers one after the other, as one."""

    def __init__(self, readers: Sequence[Reader]):
        self.readers = list(readers)
        self.starts = np.cumsum([0] + [len(r) for r in self.readers])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, lo: int, hi: int) -> list[np.ndarray | bytes]:
        out: list[np.ndarray | bytes] = []
        for reader, start in zip(self.readers, self.starts[:-1]):
            a, b = max(lo, start), min(hi, start + len(reader))
            if a < b:
                out.extend(reader.read(int(a - start), int(b - start)))
        return out

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class NamedBytes(bytes):
    """The bytes of an image file, with its path for error messages."""

    path: Path


class FileBytesReader:
    """The raw bytes of image files (decoded later, in the worker threads)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, lo: int, hi: int) -> list[bytes]:
        out = []
        for path in self.paths[lo:hi]:
            try:
                data = NamedBytes(path.read_bytes())
            except OSError as err:
                raise SourceError(f"{path}: cannot read image file ({err})") from None
            data.path = path
            out.append(data)
        return out

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- MedMNIST


def medmnist_flags() -> list[str]:
    """The 2D MedMNIST flags create_db accepts (single-label tasks)."""
    from medmnist import INFO

    return [
        flag
        for flag, info in INFO.items()
        if not flag.endswith("3d") and not info["task"].startswith("multi-label")
    ]


def medmnist_path(root: str | Path, flag: str, size: int) -> Path:
    """`<root>/<flag>.npz` for 28 px, `<root>/<flag>_<size>.npz` otherwise (MedMNIST's names)."""
    return Path(root) / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def check_medmnist_flag(flag: str) -> dict:
    """medmnist's INFO entry of a supported flag; a clear error for the others."""
    from medmnist import INFO

    if flag not in INFO:
        choices = ", ".join(medmnist_flags() + list(OTHER_DATASETS))
        raise SourceError(f"--dataset {flag}: unknown dataset; choose one of {choices}")
    info = INFO[flag]
    if info["task"].startswith("multi-label"):
        raise SourceError(
            f"--dataset {flag}: {info['python_class']} is a multi-label task "
            f"({len(info['label'])} findings per image); only single-label datasets are supported"
        )
    if flag.endswith("3d"):
        raise SourceError(
            f"--dataset {flag}: {info['python_class']} holds 3D volumes; "
            "only 2D MedMNIST is supported"
        )
    return info


def download_medmnist(root: str | Path, flag: str, size: int) -> Path:
    """Download `<flag>[_size].npz` from MedMNIST's Zenodo record (checked against its MD5)."""
    from torchvision.datasets.utils import download_url

    info = check_medmnist_flag(flag)
    suffix = "" if size == 28 else f"_{size}"
    path = medmnist_path(root, flag, size)
    download_url(info[f"url{suffix}"], str(root), filename=path.name, md5=info[f"MD5{suffix}"])
    return path


def _medmnist_labels(path: Path, key: str, n: int, n_classes: int) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        labels = npz[key]
    if not np.issubdtype(labels.dtype, np.integer):
        raise SourceError(f"{path}: '{key}' must hold integers, got dtype {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise SourceError(f"{path}: '{key}' has shape {labels.shape}; expected ({n},) or ({n}, 1)")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise SourceError(
            f"{path}: '{key}' holds labels in [{labels.min()}, {labels.max()}]; "
            f"expected [0, {n_classes - 1}]"
        )
    return labels


def open_medmnist(root: str | Path, flag: str, size: int = 224) -> Source:
    """Open `<root>/<flag>[_size].npz`: file `train` (official train+val) and `test`."""
    info = check_medmnist_flag(flag)
    if size not in MEDMNIST_SIZES:
        raise SourceError(
            f"--size {size}: MedMNIST sizes are {', '.join(map(str, MEDMNIST_SIZES))}"
        )
    path = medmnist_path(root, flag, size)
    if not path.is_file():
        url = info["url" if size == 28 else f"url_{size}"]
        raise SourceError(
            f"--dataset_root {root}: {path} not found (download it from {url} or pass --download)"
        )
    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path}: not an .npz (zip) file")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    keys = [f"{s}_{kind}" for s in ("train", "val", "test") for kind in ("images", "labels")]
    missing = [k for k in keys if f"{k}.npy" not in names]
    if missing:
        raise SourceError(f"{path}: missing array(s) {missing} (a MedMNIST file holds {keys})")

    n_classes = len(info["label"])
    classes = [info["label"][str(i)] for i in range(n_classes)]
    parts = {}
    for split in ("train", "val", "test"):
        member = npz_member(path, f"{split}_images")
        shape = member.shape
        if member.dtype != np.uint8:
            raise SourceError(f"{path}: '{split}_images' must be uint8, got dtype {member.dtype}")
        ok_shape = len(shape) in (3, 4) and shape[1:3] == (size, size)
        if not ok_shape or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise SourceError(
                f"{path}: '{split}_images' has shape {shape}; expected N x {size} x {size} "
                f"(grayscale) or N x {size} x {size} x 3 (RGB) for --size {size}"
            )
        labels = _medmnist_labels(path, f"{split}_labels", shape[0], n_classes)
        parts[split] = (open_npz_array(path, f"{split}_images"), labels)

    def metadata(splits: Sequence[str]) -> np.ndarray:
        return np.concatenate(
            [
                np.stack([np.full(len(parts[s][1]), code), np.arange(len(parts[s][1]))], axis=1)
                for code, s in enumerate(("train", "val", "test"))
                if s in splits
            ]
        ).astype(np.int64)

    fields = ("official_split", "official_index")
    counts = {s: len(parts[s][1]) for s in parts}
    files = [
        OutputFile(
            name="train",
            labels=np.concatenate([parts["train"][1], parts["val"][1]]),
            metadata=metadata(("train", "val")),
            metadata_fields=fields,
            reader=ConcatReader([parts["train"][0], parts["val"][0]]),
            info={"official_splits": {"train": counts["train"], "val": counts["val"]}},
        ),
        OutputFile(
            name="test",
            labels=parts["test"][1],
            metadata=metadata(("test",)),
            metadata_fields=fields,
            reader=parts["test"][0],
            info={"official_splits": {"test": counts["test"]}},
        ),
    ]
    storage = "compressed" if npz_member(path, "train_images").compressed else "stored"
    return Source(
        dataset=flag,
        task=info["task"],
        classes=classes,
        source_size=size,
        files=files,
        info={"source_file": str(path.resolve()), "npz_storage": storage, "official": counts},
    )


# ----------------------------------------------------------------------------- Camelyon17


def parse_s_frac(value: float) -> float:
    """Check an `--s_frac` value: a fraction in (0, 1] or a whole count > 1."""
    if not np.isfinite(value) or value <= 0:
        raise SourceError(f"--s_frac {value}: must be a fraction in (0, 1] or a count > 1")
    if value > 1 and value != int(value):
        raise SourceError(f"--s_frac {value}: a count (> 1) must be a whole number")
    return float(value)


def sample_counts(sizes: dict[int, int], s_frac: float) -> dict[int, int]:
    """How many samples to keep per group: a fraction of each, or an equal share of a total.

    A count > 1 is split equally (the first groups get one more when it does not divide), capped
    at each group's size; a fraction keeps round(fraction * size), at least 1, of each group.
    """
    s_frac = parse_s_frac(s_frac)
    groups = sorted(sizes)
    if s_frac <= 1:
        return {g: min(sizes[g], max(1, int(round(s_frac * sizes[g])))) for g in groups}
    total = int(s_frac)
    share, extra = divmod(total, len(groups))
    return {g: min(sizes[g], share + (i < extra)) for i, g in enumerate(groups)}


def camelyon_dir(root: str | Path) -> Path:
    """The WILDS folder `<root>/camelyon17_v1.0` (or `root` itself when it holds metadata.csv)."""
    root = Path(root)
    return root if (root / "metadata.csv").is_file() else root / CAMELYON_DIR


def camelyon_patch_path(folder: Path, patient: str, node: int, x: int, y: int) -> Path:
    """A patch's PNG, named as WILDS names it."""
    stem = f"patient_{patient}_node_{node}"
    return folder / "patches" / stem / f"patch_{stem}_x_{x}_y_{y}.png"


def download_camelyon17(root: str | Path) -> None:
    """Download and extract Camelyon17-WILDS (about 10 GB) with the wilds package."""
    from wilds.datasets.camelyon17_dataset import Camelyon17Dataset

    Camelyon17Dataset(root_dir=str(root), download=True)


def open_camelyon17(root: str | Path, s_frac: float = 1.0, seed: int = 202502) -> Source:
    """Open Camelyon17-WILDS: one file `client_<center>` per hospital, sampled by `s_frac`.

    Within each hospital the patches are drawn uniformly at random without replacement with a
    generator seeded by (seed, center), so one hospital's sample does not depend on the others.
    """
    import pandas as pd

    folder = camelyon_dir(root)
    csv = folder / "metadata.csv"
    if not csv.is_file():
        raise SourceError(
            f"--dataset_root {root}: {root}/{CAMELYON_DIR}/metadata.csv not found "
            "(the WILDS layout; pass --download to fetch it, about 10 GB)"
        )
    try:
        df = pd.read_csv(csv, index_col=0, dtype={"patient": str})
    except (ValueError, OSError) as err:
        raise SourceError(f"{csv}: cannot read as CSV ({err})") from None
    missing = [c for c in CAMELYON_COLUMNS if c not in df.columns]
    if missing:
        raise SourceError(f"{csv}: missing column(s) {missing}; expected {list(CAMELYON_COLUMNS)}")
    if len(df) == 0:
        raise SourceError(f"{csv}: lists no patch")
    numeric = [c for c in CAMELYON_COLUMNS if c != "patient"]
    try:
        values = {c: df[c].to_numpy(dtype=np.int64) for c in numeric}
        rows = df.index.to_numpy(dtype=np.int64)
        patient_ids = df["patient"].astype(np.int64).to_numpy()
    except (ValueError, TypeError) as err:
        raise SourceError(f"{csv}: non-integer values in {numeric} or the index ({err})") from None
    if not np.isin(values["tumor"], (0, 1)).all():
        raise SourceError(f"{csv}: column 'tumor' must hold 0 or 1")
    patients = df["patient"].to_numpy()

    centers = values["center"]
    sizes = {int(c): int((centers == c).sum()) for c in np.unique(centers)}
    counts = sample_counts(sizes, s_frac)
    files = []
    for center in sorted(sizes):
        members = np.flatnonzero(centers == center)
        rng = np.random.default_rng([seed, center])
        picked = members[np.sort(rng.choice(len(members), size=counts[center], replace=False))]
        paths = [
            camelyon_patch_path(
                folder, patients[i], values["node"][i], values["x_coord"][i], values["y_coord"][i]
            )
            for i in picked
        ]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise SourceError(
                f"{absent[0]}: patch listed in {csv} not found "
                f"({len(absent)} of {len(paths)} sampled patches of hospital {center} are missing)"
            )
        metadata = np.stack(
            [rows[picked], patient_ids[picked]]
            + [
                values[c][picked]
                for c in ("node", "x_coord", "y_coord", "slide", "center", "split")
            ],
            axis=1,
        )
        files.append(
            OutputFile(
                name=f"client_{center}",
                labels=values["tumor"][picked],
                metadata=metadata.astype(np.int64),
                metadata_fields=CAMELYON_METADATA,
                reader=FileBytesReader(paths),
                info={"center": center, "available": sizes[center]},
            )
        )
    return Source(
        dataset="camelyon17",
        task="binary-class",
        classes=["normal", "tumor"],
        source_size=CAMELYON_PATCH_SIZE,
        files=files,
        info={
            "source_file": str(csv.resolve()),
            "sampling": "uniform without replacement within each hospital, seeded (seed, center)",
            "available": {f"client_{c}": n for c, n in sizes.items()},
            "s_frac": s_frac,
        },
    )


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
    dataset: str,
    dataset_root: str | Path,
    size: int | None = None,
    s_frac: float | None = None,
    seed: int = 202502,
    download: bool = False,
    manifest: str | Path | None = None,
    columns: object | None = None,
    classes: str | None = None,
) -> Source:
    """Open any supported dataset by its `--dataset` name; SourceError on bad input.
    `manifest`, `columns` (a data.own_data.Columns) and `classes` are for imagefolder/csv."""
    dataset = dataset.lower()
    if size is not None and dataset in OTHER_DATASETS:
        raise SourceError(f"--size applies to MedMNIST datasets only, not to {dataset}")
    if s_frac is not None and dataset not in ("camelyon17", "fashionmnist"):
        raise SourceError(f"--s_frac applies to camelyon17 and fashionmnist only, not to {dataset}")
    if dataset in OWN_DATASETS:
        from data.own_data import Columns, open_own_data

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
