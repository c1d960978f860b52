"""Plots made from results files only (metrics.json, history.csv, synthetic.npz).

    python -m utils.plots RESULTS_DIR [--sweep SWEEP_DIR] --out DIR

Writes PNGs: privacy_utility.png (test accuracy, balanced accuracy, macro-F1 and the synthetic-only
accuracy against spent epsilon, when a sweep is given),
client_accuracy.png (per-client accuracy against client size), training_curves.png (from
history.csv) and real_vs_synthetic_<method>.png (2-D PCA of one client's real and synthetic
embeddings, for runs saved with --save_synthetic: their synthetic.npz holds both). Methods are
ordered and coloured by the method registry's order, read when the plots are made.

Every input is read and checked before the first PNG is written.
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.cli import OutputError, Parser, check_output  # noqa: E402
from utils.collect import find_runs, method_order, read_config  # noqa: E402
from utils.io import read_csv  # noqa: E402
from utils.results import (  # noqa: E402
    HISTORY_FILE,
    ResultsError,
    display_key,
    epsilon_spent,
    read_metrics,
)

# A method's colour: by its place in the registry's order, so that each method keeps its colour
# in every plot; methods not in it get matplotlib's next colour.
PALETTE = (
    "tab:gray",
    "black",
    "tab:blue",
    "tab:cyan",
    "tab:purple",
    "tab:orange",
    "tab:red",
    "tab:green",
    "tab:brown",
    "tab:pink",
    "tab:olive",
)
# What synthetic.npz holds (main.py --save_synthetic)
SYNTHETIC_KEYS = (
    "embeddings",
    "labels",
    "client",
    "real_embeddings",
    "real_labels",
    "real_client",
    "class_names",
)


# history.csv columns that the training curves plot
CURVES = (
    ("train_loss", "train loss"),
    ("val_acc", "validation accuracy (global head)"),
    ("epsilon_max", "spent epsilon (largest over clients)"),
)


def _load(paths: list[str | Path], order: Sequence[str]) -> list[dict]:
    """Every run under `paths`: its directory, metrics, config and history (checked), and its
    method's place in `order` (`rank`: utils.results.display_key)."""
    runs = []
    for d in find_runs(paths):
        metrics = read_metrics(d)
        runs.append(
            {
                "dir": d,
                "metrics": metrics,
                "config": read_config(d),
                "history": _history(d),
                "rank": display_key(metrics["method"], order),
            }
        )
    return runs


def _history(run_dir: Path) -> list[dict[str, float]]:
    """The plotted columns of history.csv as numbers (NaN where empty); [] without the file."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        rows = read_csv(path)
        if rows and "round" not in rows[0]:
            raise ValueError("no 'round' column")
        return [
            {
                k: float(r[k]) if r[k] not in ("", None) else math.nan
                for k in ("round", *(key for key, _ in CURVES))
                if k in r
            }
            for r in rows
        ]
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path}: not a valid history file ({err})") from None


def by_method(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by method, in the method order (their `rank`)."""
    out = defaultdict(list)
    for r in runs:
        out[r["metrics"]["method"]].append(r)
    return dict(sorted(out.items(), key=lambda kv: kv[1][0]["rank"]))


def color(run: dict) -> str | None:
    """The colour of a run's method (None: matplotlib's next one)."""
    place = run["rank"][0]
    return PALETTE[int(place) % len(PALETTE)] if math.isfinite(place) else None


def _accounted(run: dict) -> bool:
    """Whether a run trained with DP (its metrics.json holds an enabled privacy accounting)."""
    p = run["metrics"].get("privacy")
    return bool(p and p.get("enabled"))


# The panels of privacy_utility.png: (title, value of a run or None where it has none).
UTILITY_PANELS = (
    ("test accuracy", lambda m: m["summary"]["test_acc_mean"]),
    ("test balanced accuracy", lambda m: m["summary"]["test_balanced_acc_mean"]),
    ("test macro-F1", lambda m: m["summary"]["test_f1_macro_mean"]),
    (
        "synthetic-only accuracy (global model)",
        lambda m: ((m.get("fidelity") or {}).get("global_synthetic") or {}).get("acc"),
    ),
)


def variant(run: dict) -> str:
    """A run's line in the privacy-utility plot: its method, with the preset it started from
    when not the paper's."""
    method = run["metrics"]["method"]
    preset = (run["config"].get("generative") or {}).get("preset", "paper")
    return method if preset == "paper" else f"{method} ({preset})"


def privacy_utility(main_runs: list[dict], sweep_runs: list[dict], out: Path) -> Path:
    """Test accuracy, balanced accuracy, macro-F1 (means over clients) and the global
    synthetic-only accuracy against the spent epsilon (largest over clients): one line per DP
    method and preset (mean over seeds at each target); the runs without DP as horizontal
    references (methods that share nothing, or a DP method trained without DP)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.4))
    unique = {str(r["dir"]): r for r in [*main_runs, *sweep_runs]}  # a run may be in both
    dp_runs = [r for r in unique.values() if _accounted(r)]
    lines: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(dp_runs, key=lambda r: r["rank"]):
        lines[variant(r)].append(r)
    refs: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(unique.values(), key=lambda r: r["rank"]):
        if not _accounted(r):
            refs[variant(r)].append(r)
    ticks = sorted({r["metrics"]["privacy"]["target_epsilon"] for r in dp_runs})
    for ax, (title, value) in zip(axes.flat, UTILITY_PANELS):
        for name, rs in lines.items():
            by_target: dict[float, list[tuple[float, float]]] = defaultdict(list)
            for r in rs:
                p, y = r["metrics"]["privacy"], value(r["metrics"])
                if y is not None:
                    by_target[p["target_epsilon"]].append((p["epsilon_max"], y))
            if not by_target:
                continue
            xs = [np.mean([e for e, _ in v]) for _, v in sorted(by_target.items())]
            ys = [np.mean([a for _, a in v]) for _, v in sorted(by_target.items())]
            ls = "o-" if "(" not in name else "s--"
            ax.plot(xs, ys, ls, color=color(rs[0]), label=name)
        for name, rs in refs.items():
            ys = [value(r["metrics"]) for r in rs]
            if None in ys:
                continue
            what = "nothing shared" if epsilon_spent(rs[0]["metrics"]) == 0 else "no DP"
            ax.axhline(
                float(np.mean(ys)),
                ls=":",
                lw=1.2,
                color=color(rs[0]),
                label=f"{name} ({what})",
            )
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("spent epsilon (largest over clients, from the accountant)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Privacy-utility (means over clients and seeds)")
    fig.tight_layout()
    return _save(fig, out / "privacy_utility.png")


def client_accuracy(runs: list[dict], out: Path) -> Path:
    """Per-client test accuracy (mean over seeds) against the client's training size."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, rs in by_method(runs).items():
        acc, size = defaultdict(list), {}
        for r in rs:
            for c in r["metrics"]["clients"]:
                acc[c["id"]].append(c["test_acc"])
                size[c["id"]] = c.get("n_train", np.nan)  # absent from a deployment's results
        ids = sorted(acc)
        ax.scatter(
            [size[i] for i in ids],
            [np.mean(acc[i]) for i in ids],
            s=18,
            color=color(rs[0]),
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
    curves = {m: rs[0] for m, rs in by_method(runs).items() if rs[0]["history"]}
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, CURVES):
        for method, run in curves.items():
            rows = run["history"]
            if key in rows[0] and not math.isnan(rows[0][key]):
                ax.plot(
                    [r["round"] for r in rows],
                    [r[key] for r in rows],
                    color=color(run),
                    label=method,
                )
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "training_curves.png")


def synthetic_inputs(run: dict) -> dict:
    """What real_vs_synthetic draws for a run saved with --save_synthetic, from its
    synthetic.npz: one client's real training embeddings and its synthetic ones (model space),
    with labels and the class names."""
    path = run["dir"] / "synthetic.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in SYNTHETIC_KEYS if k not in npz.files]
            if missing:
                raise ResultsError(
                    f"{path}: lacks {', '.join(missing)} (written by an older main.py? rerun "
                    "the run over, saving its synthetic data)"
                )
            syn = {k: npz[k] for k in SYNTHETIC_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ResultsError(f"{path}: not a readable synthetic.npz ({err})") from None
    client = int(syn["real_client"])
    mine = syn["client"] == client
    real = syn["real_embeddings"]
    if syn["embeddings"].ndim != 2 or real.ndim != 2 or not mine.any():
        raise ResultsError(f"{path}: holds no synthetic rows of client {client}")
    if syn["embeddings"].shape[1] != real.shape[1]:
        raise ResultsError(f"{path}: real and synthetic embeddings differ in dimension")
    return {
        "method": run["metrics"]["method"],
        "client": client,
        "classes": [str(c) for c in syn["class_names"]],
        "real": real,
        "real_labels": syn["real_labels"],
        "fake": syn["embeddings"][mine],
        "fake_labels": syn["labels"][mine],
    }


def real_vs_synthetic(inputs: dict, out: Path) -> Path:
    """2-D PCA of one client's real training embeddings and its synthetic ones (model space),
    coloured by class; the PCA is fitted on the real data."""
    real, fake, client = inputs["real"], inputs["fake"], inputs["client"]
    mean = real.mean(axis=0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    pr, pf = (real - mean) @ vt[:2].T, (fake - mean) @ vt[:2].T
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True, sharey=True)
    classes = inputs["classes"]
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, pts, labels, title in (
        (axes[0], pr, inputs["real_labels"], "real"),
        (axes[1], pf, inputs["fake_labels"], "synthetic"),
    ):
        for k in np.unique(inputs["real_labels"]):
            m = labels == k
            ax.scatter(pts[m, 0], pts[m, 1], s=8, color=cmap(int(k) % cmap.N), label=classes[k])
        ax.set_title(f"client {client}: {title} ({len(pts)})")
        ax.set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    method = inputs["method"]
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
    results: list[str | Path],
    out: str | Path,
    sweep: list[str | Path] | None = None,
    order: Sequence[str] = (),
) -> list[Path]:
    """Every plot the results allow, methods in `order`; returns the files written. All inputs
    are read and checked first, so bad input leaves no plot behind."""
    out = Path(out)
    runs = _load(results, order)
    sweep_runs = _load(sweep, order) if sweep else None
    synthetic = []
    for rs in by_method(runs).values():
        with_syn = [r for r in rs if (r["dir"] / "synthetic.npz").is_file()]
        if with_syn:
            synthetic.append(synthetic_inputs(with_syn[0]))
    written = [client_accuracy(runs, out), training_curves(runs, out)]
    if sweep_runs is not None:
        written.append(privacy_utility(runs, sweep_runs, out))
    written += [real_vs_synthetic(inputs, out) for inputs in synthetic]
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        check_output(args.out, "--out", folder=True)
        written = make_all(args.results, args.out, args.sweep, method_order())
    except (ResultsError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: --out {args.out}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 2
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
