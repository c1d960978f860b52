"""Is data loading the bottleneck of create_db.py? Pure forward vs the real pipeline.

Measures, at the same batch size, (1) the backbone's pure forward throughput on a preallocated
input tensor and (2) create_db's real pipeline (read a MedMNIST-style .npz it writes, decode,
resize and crop in worker threads, normalize, forward) and prints both and their ratio; create_db's
target is a ratio of at least 0.9. Also prints the preparation-only throughput (no model).

    python experiments/benchmarks/bench_create_db.py                       # ~1 min on 2 CPU cores
    python experiments/benchmarks/bench_create_db.py --backbone vit_base_patch14_dinov2.lvd142m \\
        --batch_size 64 --n_images 4096 --size 224 --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.backbone import create_backbone
from data.encoding import embed_batches, prepared_batches, ranges
from data.medmnist_source import open_medmnist
from utils.io import write_json


def write_medmnist_like(root: Path, n: int, size: int, rgb: bool, compressed: bool) -> str:
    """A MedMNIST-style npz with `n` train images of random pixels; returns the flag."""
    flag = "pathmnist" if rgb else "organsmnist"
    rng = np.random.default_rng(0)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    empty = np.zeros((0, *shape[1:]), dtype=np.uint8)
    arrays = {
        "train_images": rng.integers(0, 256, size=shape, dtype=np.uint8),
        "train_labels": rng.integers(0, 9, size=(n, 1)).astype(np.uint8),
        "val_images": empty,
        "val_labels": np.zeros((0, 1), np.uint8),
        "test_images": empty,
        "test_labels": np.zeros((0, 1), np.uint8),
    }
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    (np.savez_compressed if compressed else np.savez)(root / name, **arrays)
    return flag


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model (random init)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--n_images", type=int, default=128, help="images per measurement")
    p.add_argument("--size", type=int, default=64, choices=(28, 64, 128, 224), help="source px")
    p.add_argument("--gray", action="store_true", help="grayscale source images (default RGB)")
    p.add_argument("--stored", action="store_true", help="uncompressed npz (memory-mapped)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs; the best counts")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)

    bb = create_backbone(args.backbone, random_init=True, device=args.device)
    bs = args.batch_size
    n = max(bs, args.n_images // bs * bs)
    with tempfile.TemporaryDirectory() as tmp:
        flag = write_medmnist_like(Path(tmp), n, args.size, not args.gray, not args.stored)
        # The preallocated input of the pure forward: the file's first batch, preprocessed (real
        # pixel statistics, so that data-dependent speed such as denormals is the same).
        with open_medmnist(tmp, flag, args.size) as src:
            x = bb.to_input(bb.prepare_batch(src.files[0].reader.read(0, bs)))
        for _ in range(2):  # warm-up
            bb.forward(x).float().cpu()
        runs = {"forward": [], "pipeline": [], "prepare_only": []}
        for _ in range(args.repeats):  # alternate, so that load from elsewhere hits both alike
            sync(bb.device)
            t0 = time.perf_counter()
            for _ in range(n // bs):
                bb.forward(x).float().cpu()
            runs["forward"].append(n / (time.perf_counter() - t0))

            with open_medmnist(tmp, flag, args.size) as src:
                batches = [(0, lo, hi) for lo, hi in ranges(n, bs)]
                t0 = time.perf_counter()
                for _ in embed_batches(src, bb, batches, args.num_workers):
                    pass
                runs["pipeline"].append(n / (time.perf_counter() - t0))

            with open_medmnist(tmp, flag, args.size) as src:
                reader = src.files[0].reader
                jobs = [
                    ((lo, hi), lambda lo=lo, hi=hi, r=reader: r.read(lo, hi))
                    for lo, hi in ranges(n, bs)
                ]
                t0 = time.perf_counter()
                for _ in prepared_batches(jobs, bb.prepare_batch, args.num_workers):
                    pass
                runs["prepare_only"].append(n / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in runs.items()}
    paired = [p / f for p, f in zip(runs["pipeline"], runs["forward"])]

    figures = {
        "backbone": args.backbone,
        "input_px": bb.image_size[0],
        "source_px": args.size,
        "source": f"{'gray' if args.gray else 'rgb'}, {'stored' if args.stored else 'compressed'}",
        "batch_size": bs,
        "num_workers": args.num_workers,
        "n_images": n,
        "device": str(bb.device)
        + (f" ({torch.cuda.get_device_name(bb.device)})" if bb.device.type == "cuda" else ""),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "forward_img_per_s": round(best["forward"], 1),
        "pipeline_img_per_s": round(best["pipeline"], 1),
        "prepare_only_img_per_s": round(best["prepare_only"], 1),
        "ratio": round(best["pipeline"] / best["forward"], 3),
        "ratio_median_of_pairs": round(float(np.median(paired)), 3),
        "runs_img_per_s": {k: [round(r, 1) for r in v] for k, v in runs.items()},
    }
    print(
        f"{args.backbone} @ {bb.image_size[0]} px, batch {bs}, {args.num_workers} workers, "
        f"{n} images from {args.size} px {figures['source']} npz on {figures['device']}\n"
        f"  pure forward   {figures['forward_img_per_s']:>9.1f} img/s\n"
        f"  real pipeline  {figures['pipeline_img_per_s']:>9.1f} img/s\n"
        f"  ratio          {figures['ratio']:>9.3f}  (best of each; target >= 0.9; median of "
        f"{args.repeats} pairs {figures['ratio_median_of_pairs']:.3f})\n"
        f"  prepare only   {figures['prepare_only_img_per_s']:>9.1f} img/s (no model)"
    )
    if args.json:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
