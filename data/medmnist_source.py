"""The MedMNIST 2D source: its .npz files, checked, downloaded and opened."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.source_base import (
    OTHER_DATASETS,
    ConcatReader,
    OutputFile,
    Source,
    SourceError,
    npz_member,
    open_npz_array,
)

MEDMNIST_SIZES = (28, 64, 128, 224)


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
