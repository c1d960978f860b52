"""Training speed of DP-CVAE and DP-CGAN at the paper's scale, on random data of its shape.

Workload: 10 clients of about 1,600 training embeddings (768-d, 11 classes; sizes spread over
+-12.5% so that clients differ in sampling rate, as after a label-skewed split), the paper's
CVAE and CGAN, batch 256, 50 rounds x 5 local epochs, epsilon 1 (PRV). Measured in one process:

1. seconds per client-epoch of the CVAE without DP;
2. the same with DP-SGD in the project's path (`fast`: single-backward ghost clipping);
3. the same with Opacus's per-sample-gradient `hooks` mode (the paper's code), over a few
   epochs; Opacus's own two-pass `ghost` mode is measured as well, for reference;
4. the whole federated DP-CVAE training (client set-up, noise calibration, 50 rounds with the
   per-round spent epsilon), and the same for DP-CGAN; with --num_threads N, N clients train
   at once, one torch thread each (as main.py does);
5. peak memory: the process's peak RSS when the DP-CVAE run ends. Most of it is there before
   any training: importing the CUDA build of torch, Opacus and the project, plus the
   torch._dynamo import that the first torch optimizer triggers (`rss_baseline_mb`); on CUDA
   also each full run's peak GPU memory (torch.cuda.max_memory_allocated).

`--device` places everything on CPU or CUDA; `--vectorized on` trains the full runs' clients all at
once as one stacked model (algorithms/federation/vectorized.py), `off` one after another
(--num_threads of them at once on CPU). Per-epoch figures are one client (on one torch thread on
CPU), as each client trains in a per-client run; `--rounds` shortens the full runs (per client-epoch
figures stay comparable).

    python experiments/benchmarks/bench_train.py --num_threads 2     # ~18 min on 2 CPU cores
    python experiments/benchmarks/bench_train.py --quick             # smoke version, seconds
    python experiments/benchmarks/bench_train.py --json bench.json   # one thread
    python experiments/benchmarks/bench_train.py --device cuda --vectorized on --json gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import time

import numpy as np
import torch

import algorithms.privacy.accounting as accounting
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.generative import train_generative
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import standardize_records
from utils.device import DEVICES, ON_CPU, Execution, resolve_device
from utils.io import write_json
from utils.progress import set_quiet
from utils.provenance import cpu_model


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(match.group(1)) / 1024 if match else float("nan")
    except OSError:
        return float("nan")


def paper_like_clients(
    n_clients: int, n_train: int, dim: int, n_classes: int, seed: int = 0
) -> list[ClientData]:
    """Random per-record standardized embeddings and labels; client sizes spread evenly over
    [0.875, 1.125] x n_train (one client: n_train). Validation and test sets are tiny."""
    rng = np.random.default_rng(seed)
    spread = np.linspace(-0.125, 0.125, n_clients) if n_clients > 1 else np.zeros(1)
    sizes = (n_train * (1 + spread)).round().astype(int)
    out = []
    for cid, n in enumerate(sizes):
        x = standardize_records(rng.normal(size=(n + 20, dim)))
        y = rng.integers(0, n_classes, size=n + 20)
        out.append(
            ClientData(cid, x[:n], y[:n], x[n : n + 10], y[n : n + 10], x[n + 10 :], y[n + 10 :])
        )
    return out


@dataclasses.dataclass(frozen=True)
class OneClient:
    """The per-epoch figures' client: its data, classes and settings, and where it trains."""

    data: ClientData
    n_classes: int
    cfg: GenerativeConfig
    device: str = "cpu"

    def make(self, dp: DPConfig, mode: str) -> CVAEClient:
        """A DP-CVAE client whose DP-SGD clips with `mode` (fast, ghost or hooks)."""
        cls = type(f"CVAEClient_{mode}", (CVAEClient,), {"grad_sample_mode": mode})
        data, n, cfg = self.data, self.n_classes, self.cfg
        return cls(data=data, n_classes=n, cfg=cfg, dp=dp, seed=0, device=self.device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_epochs(client: CVAEClient | CGANClient, epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds per local epoch over `epochs` epochs (after a warm-up epoch). CPU
    time is what the epoch costs whatever else runs on the machine."""
    device = client.device.type
    client.train_epochs(1)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    client.train_epochs(epochs)
    _sync(device)
    return (time.perf_counter() - wall) / epochs, (time.process_time() - cpu) / epochs


def per_epoch_figures(one: OneClient, epochs: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Medians over alternating repeats of the wall and CPU seconds per client-epoch: CVAE
    without DP, with DP (`fast`) and with Opacus's `ghost` mode. Alternating keeps a burst of
    load on the machine from favouring one of them."""
    clients = {
        name: one.make(dp, mode)
        for name, dp, mode in (
            ("nodp", DPConfig(enabled=False), "fast"),
            ("dp", DPConfig(), "fast"),
            ("ghost", DPConfig(), "ghost"),
        )
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    for _ in range(repeats):
        for name, client in clients.items():
            runs[name].append(time_epochs(client, epochs))
    return {
        name: (statistics.median(r[0] for r in values), statistics.median(r[1] for r in values))
        for name, values in runs.items()
    }


def full_run(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    execution: Execution = ON_CPU,
) -> dict[str, float]:
    """Wall and CPU time of the federated training (set-up + all rounds), the wall time of its
    accounting, the time per client-epoch, and on CUDA the peak GPU memory."""
    accounting._epsilon.cache_clear()  # an honest run: no epsilon computed by an earlier one
    accounting._noise_multiplier.cache_clear()
    seconds_in = {"accounting": 0.0, "calibration": 0.0}
    epsilon_fn, calibrate_fn = accounting._epsilon, accounting._noise_multiplier

    def timed(fn, key):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds_in[key] += time.perf_counter() - start

        return call

    accounting._epsilon = timed(epsilon_fn, "accounting")
    accounting._noise_multiplier = timed(calibrate_fn, "calibration")
    cuda = execution.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        gen_clients, _, history = train_generative(
            method=method,
            clients=clients,
            n_classes=n_classes,
            cfg=cfg,
            dp=DPConfig(),
            seed=0,
            execution=execution,
        )
        _sync(execution.device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        accounting._epsilon, accounting._noise_multiplier = epsilon_fn, calibrate_fn
    client_epochs = len(clients) * cfg.n_rounds * cfg.local_epochs
    return {
        "sec": seconds,
        # the rounds alone: without the noise calibration, a set-up cost of every run
        "sec_per_client_epoch": (seconds - seconds_in["calibration"]) / client_epochs,
        "calibration_sec": seconds_in["calibration"],
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "cpu_sec": cpu,
        "accounting_sec": seconds_in["accounting"],
        "prv_evaluations": epsilon_fn.cache_info().misses,
        "epsilon_max": max(c.privacy()["epsilon"] for c in gen_clients),
        "steps_per_client": [c.privacy()["steps"] for c in gen_clients],
        "rounds": len(history),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke version (not a timing)")
    p.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch thread budget of the full runs: clients trained at once (default 1, as "
        "main.py; 0: torch's default, one per core)",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs per per-epoch measurement")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats (median counts)")
    p.add_argument("--hooks_epochs", type=int, default=2, help="epochs timed in hooks mode")
    p.add_argument("--skip_cgan", action="store_true", help="no full DP-CGAN run")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where everything trains (auto: CUDA when available; default cpu)",
    )
    p.add_argument(
        "--vectorized",
        choices=("on", "off"),
        default="off",
        help="full runs: every client at once as one stacked model (on) or one after another "
        "(off, default)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the full runs (default: the paper's 50; fewer for a quicker measure)",
    )
    p.add_argument(
        "--skip_per_epoch",
        action="store_true",
        help="no per-epoch figures (items 1-3): the full runs only",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    threads = args.num_threads if args.num_threads > 0 else torch.get_num_threads()
    set_quiet(True)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo (~180 MB)
    rss_baseline = _status_mb("VmRSS")
    load_before = os.getloadavg()

    device = resolve_device(args.device, "--device")
    execution = Execution(device, vectorized=args.vectorized == "on")
    if args.quick:
        n_clients, n_train, dim, n_classes = 3, 200, 64, 11
        cfg = GenerativeConfig(n_rounds=2, local_epochs=1)
        epochs, repeats, hooks_epochs = 1, 1, 1
    else:
        n_clients, n_train, dim, n_classes = 10, 1600, 768, 11
        cfg = GenerativeConfig()
        epochs, repeats, hooks_epochs = args.epochs, args.repeats, args.hooks_epochs
    if args.rounds:
        cfg = dataclasses.replace(cfg, n_rounds=args.rounds)
    clients = paper_like_clients(n_clients, n_train, dim, n_classes)
    one = paper_like_clients(1, n_train, dim, n_classes, seed=1)[0]

    torch.set_num_threads(threads)
    cvae = full_run("dpcvae", clients, n_classes, cfg, execution)
    peak_cvae = _status_mb("VmHWM")  # first, so that it is the run's own peak
    cgan = None if args.skip_cgan else full_run("dpcgan", clients, n_classes, cfg, execution)
    torch.set_num_threads(1)
    per_epoch: dict = {k: (None, None) for k in ("nodp", "dp", "ghost", "hooks")}
    if not args.skip_per_epoch:
        single = OneClient(one, n_classes, cfg, device)
        per_epoch = per_epoch_figures(single, epochs, repeats)
        per_epoch["hooks"] = time_epochs(single.make(DPConfig(), "hooks"), hooks_epochs)

    def ratio(a, b):
        return None if a is None or b is None else a / b

    (nodp, nodp_cpu), (dp, dp_cpu), (ghost, ghost_cpu), (hooks, hooks_cpu) = (
        per_epoch[k] for k in ("nodp", "dp", "ghost", "hooks")
    )
    out = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "vectorized": execution.vectorized,
        "sec_per_client_epoch_nodp": nodp,
        "sec_per_client_epoch_dp": dp,
        "sec_per_client_epoch_hooks": hooks,
        "sec_per_client_epoch_opacus_ghost": ghost,
        "ratio_dp_over_nodp": ratio(dp, nodp),
        "ratio_hooks_over_dp": ratio(hooks, dp),
        "ratio_opacus_ghost_over_dp": ratio(ghost, dp),
        "cpu_sec_per_client_epoch": {
            "nodp": nodp_cpu,
            "dp": dp_cpu,
            "hooks": hooks_cpu,
            "opacus_ghost": ghost_cpu,
        },
        "full_run_sec_dpcvae": cvae["sec"],
        "full_run_cpu_sec_dpcvae": cvae["cpu_sec"],
        "full_run_accounting_sec_dpcvae": cvae["accounting_sec"],
        "full_run_calibration_sec_dpcvae": cvae["calibration_sec"],
        "full_run_prv_evaluations_dpcvae": cvae["prv_evaluations"],
        "full_run_sec_per_client_epoch_dpcvae": cvae["sec_per_client_epoch"],
        "peak_gpu_mb_dpcvae": cvae["peak_gpu_mb"],
        "epsilon_max_dpcvae": cvae["epsilon_max"],
        "full_run_sec_dpcgan": cgan["sec"] if cgan else None,
        "full_run_cpu_sec_dpcgan": cgan["cpu_sec"] if cgan else None,
        "full_run_accounting_sec_dpcgan": cgan["accounting_sec"] if cgan else None,
        "full_run_sec_per_client_epoch_dpcgan": cgan["sec_per_client_epoch"] if cgan else None,
        "peak_gpu_mb_dpcgan": cgan["peak_gpu_mb"] if cgan else None,
        "peak_rss_mb": peak_cvae,
        "peak_rss_mb_all": _status_mb("VmHWM"),  # includes hooks mode's per-sample gradients
        "rss_baseline_mb": rss_baseline,
        "run_rss_increment_mb": peak_cvae - rss_baseline,
        "torch_threads": threads,
        "clients_at_once": n_clients if execution.vectorized else min(threads, n_clients),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
        "torch": torch.__version__,
        "quick": args.quick,
        "workload": {
            "clients": n_clients,
            "train_sizes": [c.n_train for c in clients],
            "dim": dim,
            "classes": n_classes,
            "batch_size": cfg.batch_size,
            "rounds": cfg.n_rounds,
            "local_epochs": cfg.local_epochs,
            "steps_per_client": cvae["steps_per_client"],
        },
    }
    print_table(out)
    if args.json:
        write_json(args.json, out)
    return out


def print_table(r: dict) -> None:
    w = r["workload"]
    print(
        f"workload: {w['clients']} clients x ~{int(np.mean(w['train_sizes']))} samples, "
        f"{w['dim']}-d, {w['classes']} classes, batch {w['batch_size']}, "
        f"{w['rounds']} rounds x {w['local_epochs']} epochs"
    )
    where = r["gpu"] if r["device"] == "cuda" else f"{r['cpu']}, {r['cpu_count']} cores"
    path = "vectorized (all clients at once)" if r["vectorized"] else "per-client"
    print(
        f"machine: {where}, torch {r['torch']}; full runs: {path} on {r['device']}, "
        f"{r['torch_threads']} thread(s), {r['clients_at_once']} client(s) at once; "
        f"load avg before {r['load_avg_before'][0]:.2f}, after {r['load_avg_after'][0]:.2f}"
    )
    cpu = r["cpu_sec_per_client_epoch"]

    def over(a, b):
        return None if a is None or b is None else a / b

    rows = [  # (name, wall seconds or other figure, CPU seconds or None)
        ("1 CVAE, no DP (s / client-epoch)", r["sec_per_client_epoch_nodp"], cpu["nodp"]),
        ("2 DP-CVAE, fast path (s / client-epoch)", r["sec_per_client_epoch_dp"], cpu["dp"]),
        (
            "3 DP-CVAE, Opacus hooks (s / client-epoch)",
            r["sec_per_client_epoch_hooks"],
            cpu["hooks"],
        ),
        (
            "  DP-CVAE, Opacus ghost (s / client-epoch)",
            r["sec_per_client_epoch_opacus_ghost"],
            cpu["opacus_ghost"],
        ),
        ("4 full DP-CVAE run (s)", r["full_run_sec_dpcvae"], r["full_run_cpu_sec_dpcvae"]),
        ("    per client-epoch, rounds only (s)", r["full_run_sec_per_client_epoch_dpcvae"], None),
        ("    of which accounting (s)", r["full_run_accounting_sec_dpcvae"], None),
        ("    of which noise calibration (s)", r["full_run_calibration_sec_dpcvae"], None),
        ("    peak GPU memory (MB)", r["peak_gpu_mb_dpcvae"], None),
        ("  full DP-CGAN run (s)", r["full_run_sec_dpcgan"], r["full_run_cpu_sec_dpcgan"]),
        ("    per client-epoch, rounds only (s)", r["full_run_sec_per_client_epoch_dpcgan"], None),
        ("    peak GPU memory (MB)", r["peak_gpu_mb_dpcgan"], None),
        ("5 peak RSS at end of DP-CVAE run (MB)", r["peak_rss_mb"], None),
        ("    RSS before any training (MB)", r["rss_baseline_mb"], None),
        ("  ratio 2/1 (DP overhead)", r["ratio_dp_over_nodp"], over(cpu["dp"], cpu["nodp"])),
        ("  ratio 3/2 (hooks vs fast)", r["ratio_hooks_over_dp"], over(cpu["hooks"], cpu["dp"])),
        (
            "  ratio ghost/fast",
            r["ratio_opacus_ghost_over_dp"],
            over(cpu["opacus_ghost"], cpu["dp"]),
        ),
    ]
    print(f"{'':<44} {'wall':>10} {'cpu':>10}")
    for name, wall, cpu_time in rows:
        shown = "-" if wall is None else f"{wall:.4g}"
        print(f"{name:<44} {shown:>10} {'' if cpu_time is None else f'{cpu_time:.4g}':>10}")


if __name__ == "__main__":
    main()
