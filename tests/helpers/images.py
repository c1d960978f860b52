"""Tiny image datasets in the real on-disk formats, made by the tests themselves.

- `make_medmnist`: `<root>/<flag>[_<size>].npz` with `{train,val,test}_{images,labels}` as MedMNIST
  ships them (uint8 images N x S x S or N x S x S x 3, uint8 labels N x 1), stored or compressed.
- `make_camelyon`: `<root>/camelyon17_v1.0/metadata.csv` and 96 x 96 PNG patches in the WILDS
  layout, over a few hospitals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_BACKBONE = "test_vit"  # a few hundred thousand random weights; fast on one CPU thread


def make_images(n: int, size: int, rgb: bool, seed: int) -> np.ndarray:
    """Smooth random uint8 images (blobs rather than pure noise), N x S x S (x 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    channels = 3 if rgb else 1
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i in range(n):
        for c in range(channels):
            a, b, p = rng.uniform(1, 6, size=3)
            img = 0.5 + 0.25 * np.sin(a * np.pi * xx + p) + 0.25 * np.cos(b * np.pi * yy)
            out[i, :, :, c] = np.clip(img * 255 + rng.normal(0, 8, img.shape), 0, 255)
    return out if rgb else out[..., 0]


def make_medmnist(
    root: Path,
    flag: str = "organsmnist",
    size: int = 28,
    counts: tuple[int, int, int] = (20, 8, 12),
    n_classes: int = 11,
    rgb: bool = False,
    compressed: bool = False,
    seed: int = 0,
) -> Path:
    """Write a MedMNIST-style `.npz` with `counts` (train, val, test) images; return its path."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, (split, n) in enumerate(zip(("train", "val", "test"), counts)):
        arrays[f"{split}_images"] = make_images(n, size, rgb, seed=seed * 10 + i)
        arrays[f"{split}_labels"] = rng.integers(0, n_classes, size=(n, 1)).astype(np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def make_camelyon(
    root: Path, sizes: dict[int, int], seed: int = 0, patch: int = 96
) -> tuple[Path, list[dict]]:
    """Write a WILDS-style Camelyon17 folder with `sizes[center]` patches per hospital.

    Returns the folder and the rows of metadata.csv (as dicts, in file order).
    """
    folder = root / "camelyon17_v1.0"
    rng = np.random.default_rng(seed)
    rows = []
    for center, n in sizes.items():
        for j in range(n):
            patient = f"{10 * center + j % 2:03d}"
            node = j % 3
            rows.append(
                {
                    "patient": patient,
                    "node": node,
                    "x_coord": 1000 + 32 * j,
                    "y_coord": 2000 + 16 * j,
                    "tumor": int(rng.integers(0, 2)),
                    "slide": 10 * center + node,
                    "center": center,
                    "split": int(j % 4 == 0),
                }
            )
    images = make_images(len(rows), patch, rgb=True, seed=seed + 1)
    for row, img in zip(rows, images):
        stem = f"patient_{row['patient']}_node_{row['node']}"
        path = folder / "patches" / stem / f"patch_{stem}_x_{row['x_coord']}_y_{row['y_coord']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    header = ["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
    lines = [",".join(header)]
    for i, row in enumerate(rows):
        lines.append(",".join([str(i)] + [str(row[k]) for k in header[1:]]))
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder, rows


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An unsigned-byte IDX file as Fashion-MNIST ships it: magic 0x00000803 (or 0x00000801
    for labels), big-endian uint32 sizes, then the bytes; gzipped like the official files."""
    import gzip
    import struct

    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def make_fashionmnist(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """The four official Fashion-MNIST files in `root` (28 px images, labels 0-9); returns the
    arrays written, by split."""
    rng = np.random.default_rng(seed)
    names = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        x = make_images(n, 28, rgb=False, seed=seed + i)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(root / names[split][0], x)
        write_idx(root / names[split][1], y)
        out[split] = (x, y)
    return out


def write_gray_png(path: Path, size: int = 16, seed: int = 0) -> Path:
    """One tiny smooth 8-bit grayscale PNG at `path` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_images(1, size, rgb=False, seed=seed)[0]).save(path)
    return path


def make_site_manifest(
    root: Path,
    sites: dict[str, int],
    classes: tuple[str, ...] = ("benign", "malignant"),
    delimiter: str = ",",
) -> Path:
    """`root/manifest.csv` (path, label, site) over `sites[name]` PNGs per site, the classes in
    turn; `delimiter` as a spreadsheet in that locale writes it."""
    lines = [delimiter.join(("path", "label", "site"))]
    k = 0
    for site, n in sites.items():
        for i in range(n):
            write_gray_png(root / site / f"{i}.png", seed=k)
            lines.append(delimiter.join((f"{site}/{i}.png", classes[i % len(classes)], site)))
            k += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"
