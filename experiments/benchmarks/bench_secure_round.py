"""Cost of a round of noise shares under secure aggregation in simulation, against today's
round: for 10 sites and the vector a round releases (dpcvae --preset dp on Fashion-MNIST's
1,280-d embeddings: the decoder summed, the encoder noised locally; dpfedpft's one release of
diag statistics), the seconds of each site's encoding with its Skellam share (rotation,
rounding, Poisson draws), of the coordinator's modular sum and decoding, and of the Gaussian
noise a site draws today for the same vector. One CPU thread; medians over interleaved
repeats. The masking of SecAgg+ itself is measured by the Flower loopback
(bench_flower.py); this is the arithmetic the simulation and the deployment share.

    python experiments/benchmarks/bench_secure_round.py [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.pft_config import PFTConfig, release_size
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.noise import dpsgd_noise
from algorithms.privacy.secure_aggregation import (
    decode_sum,
    encode_share,
    noisy_local,
    plan_secure_sum,
    rotation_seed,
    sum_shares,
)
from algorithms.privacy.skellam import gaussian_rdp
from utils.io import write_json
from utils.provenance import cpu_model

SITES = 10
DIM, CLASSES = 1280, 10


def vectors() -> dict[str, tuple[int, int, float, int]]:
    """name: (summed length, local length, sensitivity, steps) of each method's release."""
    cfg = GenerativeConfig(latent_dim=4, cvae_layers=0)
    counts = CVAEClient.parameter_counts(DIM, CLASSES, cfg)
    pft = release_size("dpfedpft", PFTConfig(), DIM, CLASSES)
    return {
        "dpcvae --preset dp (a round)": (
            counts["shared"],
            counts["total"] - counts["shared"],
            1.5,
            40,
        ),
        "dpfedpft (the release)": (pft, 0, 3**0.5, 1),
    }


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(release: tuple[int, int, float, int], repeats: int) -> dict:
    """The three timings of one release: (summed length, local length, sensitivity, steps)."""
    shared, local, sens, steps = release
    plan = plan_secure_sum(
        dims=(shared, local) if local else (shared,),
        sensitivity=sens,
        n_sites=SITES,
        min_honest=SITES,
        epsilon=1.0,
        delta=1e-4,
        steps=steps,
        seed=0,
        extra=gaussian_rdp(20.0) if local else None,
    )
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(shared, dtype=torch.float64) for _ in range(SITES)]
    enc = torch.randn(max(local, 1), dtype=torch.float64)
    seed = rotation_seed(plan, 0, 0)
    residues = [encode_share(x, plan, seed, gen) for x in xs]

    def site() -> None:
        encode_share(xs[0], plan, seed, gen)
        if local:
            noisy_local(enc, plan, rotation_seed(plan, 0, 1), gen)

    def coordinator() -> None:
        decode_sum(sum_shares(residues, plan), plan, seed)

    def gaussian() -> None:
        dpsgd_noise(1.0, (shared + local,), gen, torch.float32)

    return {
        "summed": shared,
        "local": local,
        "site_secure_s": median_seconds(site, repeats),
        "coordinator_secure_s": median_seconds(coordinator, repeats),
        "site_gaussian_s": median_seconds(gaussian, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict = {"cpu": cpu_model(), "sites": SITES, "threads": 1, "rows": []}
    for name, release in vectors().items():
        row = {"release": name, **measure(release, args.repeats)}
        out["rows"].append(row)
        print(
            f"{name}: {row['summed']:,} summed + {row['local']:,} local numbers; a site's "
            f"encoding with its share {row['site_secure_s'] * 1e3:.1f} ms (today's Gaussian "
            f"noise {row['site_gaussian_s'] * 1e3:.1f} ms); the coordinator's sum of {SITES} "
            f"and decoding {row['coordinator_secure_s'] * 1e3:.1f} ms"
        )
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
