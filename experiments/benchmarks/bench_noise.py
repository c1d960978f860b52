"""Cost of the noise draws, on one CPU thread: the DP-SGD Gaussian noise of the CVAE's size
(algorithms/privacy/noise.py, against torch's float32 and float64 normal samplers) and a site's
Skellam share of the same size (algorithms/privacy/skellam.py); with --step, the DP-CVAE's
seconds per client-epoch with each Gaussian sampler swapped in (and without noise) against the
step without DP.

Every figure is the median over interleaved repeats (a burst of load on a shared machine then
hits every variant alike) of CPU seconds (what the process used); ratios are the figures to
compare.

    python experiments/benchmarks/bench_noise.py                  # draws only, ~1 minute
    python experiments/benchmarks/bench_noise.py --step --json bench_noise.json  # ~3 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import algorithms.privacy.opacus_compat as opacus_compat
from algorithms.privacy.noise import dpsgd_noise
from algorithms.privacy.skellam import skellam_share
from utils.io import write_json
from utils.provenance import cpu_model
from utils.seeding import generator

# The paper's CVAE (768-d embeddings, 11 classes): parameters that DP-SGD noises each step.
CVAE_PARAMETERS = 740_000


def torch_float32(std, shape, gen, dtype=torch.float32):
    """torch's float32 normals (stop at 5.77 sigma): the sampler before 4efb875."""
    return torch.normal(0.0, std, size=tuple(shape), generator=gen, dtype=dtype)


def torch_float64(std, shape, gen, dtype=torch.float32):
    """torch's float64 normals, cast (scalar code on CPU): the sampler from 4efb875."""
    return torch.normal(0.0, std, size=tuple(shape), generator=gen, dtype=torch.float64).to(dtype)


def no_noise(std, shape, gen, dtype=torch.float32):
    """Zeros: what the DP step costs without any draw."""
    return torch.zeros(tuple(shape), dtype=dtype)


GAUSSIAN_SAMPLERS = {
    "project": dpsgd_noise,
    "torch_float32": torch_float32,
    "torch_float64": torch_float64,
}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds of each function over `repeats` interleaved rounds (after a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def draw_figures(size: int, repeats: int, variances: tuple[float, ...]) -> dict[str, float]:
    """Seconds per draw of `size` values: each Gaussian sampler and a Skellam share (m = 10
    sites) at each total variance."""
    gen = generator(0)
    fns: dict[str, Callable[[], object]] = {
        f"gaussian_{name}": (lambda s=s: s(1.0, (size,), gen))
        for name, s in GAUSSIAN_SAMPLERS.items()
    }
    for v in variances:
        fns[f"skellam_variance_{v:g}"] = lambda v=v: skellam_share(size, v, 10, gen)
    return interleaved(fns, repeats)


def step_figures(epochs: int, repeats: int) -> dict[str, float]:
    """CPU seconds per client-epoch of the paper-scale DP-CVAE client (bench_train.py's) without
    DP and with DP-SGD drawing its noise from each sampler (swapped into opacus_compat, where
    the fast step draws), interleaved."""
    from algorithms.privacy.config import DPConfig
    from algorithms.privacy.generative_config import GenerativeConfig
    from experiments.benchmarks.bench_train import make_client, paper_like_clients, time_epochs

    one = paper_like_clients(1, 1600, 768, 11, seed=1)[0]
    cfg = GenerativeConfig()
    samplers = {**GAUSSIAN_SAMPLERS, "no_noise": no_noise}
    nodp = make_client("dpcvae", one, 11, cfg, DPConfig(enabled=False), "fast")
    dp = {name: make_client("dpcvae", one, 11, cfg, DPConfig(), "fast") for name in samplers}

    def epoch_with(name: str) -> float:
        opacus_compat.dpsgd_noise = samplers[name]
        try:
            return time_epochs(dp[name], epochs)[1]
        finally:
            opacus_compat.dpsgd_noise = dpsgd_noise

    runs = {"nodp": [], **{name: [] for name in samplers}}
    for _ in range(repeats):
        runs["nodp"].append(time_epochs(nodp, epochs)[1])
        for name in samplers:
            runs[name].append(epoch_with(name))
    return {name: statistics.median(r) for name, r in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=CVAE_PARAMETERS, help="values per draw")
    p.add_argument("--repeats", type=int, default=15, help="interleaved repeats of the draws")
    p.add_argument("--step", action="store_true", help="also the DP-CVAE step per sampler")
    p.add_argument("--step_repeats", type=int, default=5, help="interleaved repeats of --step")
    p.add_argument("--epochs", type=int, default=5, help="epochs per --step measurement")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    # total variances on the integer grid: a scale of 1e2..1e4 grid steps per clip norm, noise
    # multiplier about 1 to 20
    variances = (1e4, 1e8, 1e12)
    draws = draw_figures(args.size, args.repeats, variances)
    out = {
        "size": args.size,
        "sec_per_draw": draws,
        "ratio_over_project_gaussian": {
            name: sec / draws["gaussian_project"] for name, sec in draws.items()
        },
        "skellam_min_honest_sites": 10,
        "sec_per_client_epoch": step_figures(args.epochs, args.step_repeats) if args.step else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": 1,
        "load_avg_before": list(load_before),
    }
    if out["sec_per_client_epoch"]:
        nodp = out["sec_per_client_epoch"]["nodp"]
        out["step_ratio_over_nodp"] = {k: v / nodp for k, v in out["sec_per_client_epoch"].items()}
    out["load_avg_after"] = list(os.getloadavg())
    print_figures(out)
    if args.json:
        write_json(args.json, out)
    return out


def print_figures(r: dict) -> None:
    print(
        f"machine: {r['cpu']}, {r['cpu_count']} cores, torch {r['torch']}, 1 thread; load avg "
        f"before {r['load_avg_before'][0]:.2f}, after {r['load_avg_after'][0]:.2f}"
    )
    print(f"draws of {r['size']:,} values (median CPU ms, ratio to the project's Gaussian):")
    for name, sec in r["sec_per_draw"].items():
        print(f"  {name:<32} {sec * 1e3:9.2f} ms {r['ratio_over_project_gaussian'][name]:7.2f}x")
    if r["sec_per_client_epoch"]:
        print("DP-CVAE client-epoch (median CPU s, ratio to no DP):")
        for name, sec in r["sec_per_client_epoch"].items():
            print(f"  {name:<32} {sec:9.4f} s  {r['step_ratio_over_nodp'][name]:7.2f}x")


if __name__ == "__main__":
    main()
