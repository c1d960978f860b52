"""Plots made from results files only (metrics.json, history.csv, synthetic.npz).

    python -m utils.plots RESULTS_DIR [--sweep SWEEP_DIR] --out DIR

Writes PNGs: privacy_utility.png (test accuracy against spent epsilon, when a sweep is given),
client_accuracy.png (per-client accuracy against client size), training_curves.png (from
history.csv) and real_vs_synthetic_<method>.png (2-D PCA of one client's real and synthetic
embeddings, for runs saved with --save_synthetic).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.collect import METHOD_ORDER, find_runs  # noqa: E402
from utils.io import read_csv, read_json  # noqa: E402
from utils.results import CONFIG_FILE, HISTORY_FILE, ResultsError, read_metrics  # noqa: E402

REFERENCES = ("centralized", "fedlambda", "fedavg", "local")
COLORS = {
    "local": "tab:gray",
    "centralized": "black",
    "fedavg": "tab:blue",
    "fedprox": "tab:cyan",
    "fedlambda": "tab:purple",
    "dpcvae": "tab:red",
    "dpcgan": "tab:orange",
}


def _load(paths: list[str | Path]) -> list[dict]:
    runs = []
    for d in find_runs(paths):
        config = read_json(d / CONFIG_FILE) if (d / CONFIG_FILE).is_file() else {}
        runs.append({"dir": d, "metrics": read_metrics(d), "config": config})
    return runs


def _by_method(runs: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in runs:
        out[r["metrics"]["method"]].append(r)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _acc(runs: list[dict]) -> float:
    return float(np.mean([r["metrics"]["summary"]["test_acc_mean"] for r in runs]))


def privacy_utility(main_runs: list[dict], sweep_runs: list[dict], out: Path) -> Path:
    """Mean test accuracy against the spent epsilon (largest over clients), one line per DP
    method (mean over seeds at each target); the baselines as horizontal references."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points: dict[str, dict[float, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    unique = {str(r["dir"]): r for r in [*main_runs, *sweep_runs]}  # a run may be in both
    for r in unique.values():
        p = r["metrics"].get("privacy")
        if not p or not p.get("enabled"):
            continue
        points[r["metrics"]["method"]][p["target_epsilon"]].append(
            (p["epsilon_max"], r["metrics"]["summary"]["test_acc_mean"])
        )
    for method, by_target in points.items():
        xs = [np.mean([e for e, _ in v]) for _, v in sorted(by_target.items())]
        ys = [np.mean([a for _, a in v]) for _, v in sorted(by_target.items())]
        ax.plot(xs, ys, "o-", color=COLORS.get(method), label=method)
    grouped = _by_method(main_runs)
    for method in REFERENCES:
        if method in grouped:
            ax.axhline(
                _acc(grouped[method]),
                ls="--",
                lw=1,
                color=COLORS.get(method),
                label=f"{method} (no DP)" if method != "local" else "local (nothing shared)",
            )
    ax.set_xscale("log")
    ticks = sorted({t for by_target in points.values() for t in by_target})
    if ticks:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("spent epsilon (largest over clients, from the accountant)")
    ax.set_ylabel("test accuracy (mean over clients)")
    ax.set_title("Privacy-utility")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "privacy_utility.png")


def client_accuracy(runs: list[dict], out: Path) -> Path:
    """Per-client test accuracy (mean over seeds) against the client's training size."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, rs in _by_method(runs).items():
        acc, size = defaultdict(list), {}
        for r in rs:
            for c in r["metrics"]["clients"]:
                acc[c["id"]].append(c["test_acc"])
                size[c["id"]] = c["n_train"]
        ids = sorted(acc)
        ax.scatter(
            [size[i] for i in ids],
            [np.mean(acc[i]) for i in ids],
            s=18,
            color=COLORS.get(method),
            label=method,
            alpha=0.8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("client training size")
    ax.set_ylabel("test accuracy")
    ax.set_title("Per-client accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "client_accuracy.png")


def training_curves(runs: list[dict], out: Path) -> Path | None:
    """Train loss, validation accuracy and spent epsilon per round (first seed of each method)."""
    panels = [
        ("train_loss", "train loss"),
        ("val_acc", "validation accuracy (global head)"),
        ("epsilon_max", "spent epsilon (largest over clients)"),
    ]
    curves = {}
    for method, rs in _by_method(runs).items():
        path = rs[0]["dir"] / HISTORY_FILE
        rows = read_csv(path) if path.is_file() else []
        if rows:
            curves[method] = rows
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, panels):
        for method, rows in curves.items():
            if key in rows[0] and rows[0][key] not in ("", None):
                ax.plot(
                    [int(r["round"]) for r in rows],
                    [float(r[key]) for r in rows],
                    color=COLORS.get(method),
                    label=method,
                )
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "training_curves.png")


def real_vs_synthetic(run: dict, out: Path, client: int | None = None) -> Path | None:
    """2-D PCA of one client's real training embeddings and its synthetic ones (model space),
    coloured by class; the PCA is fitted on the real data."""
    from data.database import load_database
    from data.features import squash, standardize_records
    from data.partition import load_split

    path = run["dir"] / "synthetic.npz"
    if not path.is_file():
        return None
    cfg = run["config"]
    db = load_database(cfg["database_root"])
    split = load_split(cfg["split_file"], db)
    with np.load(path) as syn:
        s_emb, s_lab, s_client = syn["embeddings"], syn["labels"], syn["client"]
    clients = {c["id"]: c for c in split["clients"]}
    if client is None:  # the largest client
        client = max(clients, key=lambda i: len(clients[i]["train"]))
    x, y, _ = db.pooled()
    idx = np.asarray(clients[client]["train"])
    temperature = cfg["generative"]["squash_temperature"]
    real = squash(standardize_records(x[idx]), temperature)
    fake = s_emb[s_client == client]
    fake_y = s_lab[s_client == client]
    mean = real.mean(axis=0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    pr, pf = (real - mean) @ vt[:2].T, (fake - mean) @ vt[:2].T
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab10" if db.n_classes <= 10 else "tab20")
    for ax, pts, labels, title in (
        (axes[0], pr, y[idx], "real"),
        (axes[1], pf, fake_y, "synthetic"),
    ):
        for k in np.unique(y[idx]):
            m = labels == k
            ax.scatter(pts[m, 0], pts[m, 1], s=8, color=cmap(int(k) % cmap.N), label=db.classes[k])
        ax.set_title(f"client {client}: {title} ({len(pts)})")
        ax.set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    method = run["metrics"]["method"]
    fig.suptitle(f"{method}: real vs synthetic embeddings (PCA fitted on real)")
    return _save(fig, out / f"real_vs_synthetic_{method}.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def make_all(
    results: list[str | Path], out: str | Path, sweep: list[str | Path] | None = None
) -> list[Path]:
    """Every plot the results allow; returns the files written."""
    out = Path(out)
    runs = _load(results)
    written = [client_accuracy(runs, out), training_curves(runs, out)]
    if sweep:
        written.append(privacy_utility(runs, _load(sweep), out))
    for rs in _by_method(runs).values():
        with_syn = [r for r in rs if (r["dir"] / "synthetic.npz").is_file()]
        if with_syn:
            written.append(real_vs_synthetic(with_syn[0], out))
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="run directories or folders above them")
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=None,
        help="runs of a privacy sweep (DP methods at several epsilons)",
    )
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    try:
        written = make_all(args.results, args.out, args.sweep)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
