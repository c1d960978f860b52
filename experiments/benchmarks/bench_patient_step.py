"""Cost of the patient-level DP-SGD step (user-level: each sampled patient's summed gradient
clipped) against the record-level step, per client-epoch, at the paper's shapes.

Workload: one DP-CVAE client of 1,600 training embeddings (768-d, 11 classes), the paper's CVAE,
batch 256 (records, or patients at the patient unit), epsilon 1; the records are grouped into
patients of k records (one class each). Both units see the same records; the patient unit takes
fewer, larger steps per epoch (n/k patients, 256 of them per expected batch). Prints seconds
per epoch (median of the repeats) for each k and unit, on one torch thread.

    python experiments/benchmarks/bench_patient_step.py            # ~1-2 min on one CPU core
    python experiments/benchmarks/bench_patient_step.py --quick    # smoke version, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.generative import seeded_global_weights
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import standardize_records
from utils.progress import set_quiet


def client_data(n: int, dim: int, n_classes: int, k: int) -> ClientData:
    """n random records in patients of k records, one class per patient."""
    rng = np.random.default_rng(0)
    x = standardize_records(rng.normal(size=(n, dim))).astype(np.float32)
    patients = np.arange(n) // k
    y = rng.integers(0, n_classes, size=patients.max() + 1)[patients]
    return ClientData(0, x, y, x[:2], y[:2], x[:2], y[:2], patients)


def seconds_per_epoch(data: ClientData, unit: str, cfg: GenerativeConfig, repeats: int) -> float:
    """Median wall time of one local epoch of a client at this privacy unit."""
    client = CVAEClient(data=data, n_classes=11, cfg=cfg, dp=DPConfig(privacy_unit=unit), seed=0)
    client.fit(seeded_global_weights("dpcvae", data.x_train.shape[1], 11, cfg, seed=0), 0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.train_epochs(1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke version (not a timing)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per figure")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_quiet(True)
    n, dim = (120, 16) if args.quick else (1600, 768)
    cfg = GenerativeConfig(n_rounds=50, local_epochs=5, batch_size=256)
    print(f"{'k':>3} {'unit':>8} {'s/epoch':>8} {'vs record':>9}")
    for k in (1, 5, 20):
        data = client_data(n, dim, 11, k)
        record = seconds_per_epoch(data, "record", cfg, args.repeats)
        patient = seconds_per_epoch(data, "patient", cfg, args.repeats)
        print(f"{k:>3} {'record':>8} {record:>8.3f} {1.0:>9.2f}")
        print(f"{k:>3} {'patient':>8} {patient:>8.3f} {patient / record:>9.2f}")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
