"""The Camelyon17-WILDS source: its patches, sampled per hospital, downloaded and opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.source_base import FileBytesReader, OutputFile, Source, SourceError, parse_s_frac

CAMELYON_DIR = "camelyon17_v1.0"


CAMELYON_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")


CAMELYON_METADATA = ("row", "patient", "node", "x_coord", "y_coord", "slide", "center", "split")


CAMELYON_PATCH_SIZE = 96


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
