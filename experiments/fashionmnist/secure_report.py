"""Issue 31's study report, from the runs of secure_study.sh: the plot of synthetic-only
accuracy and of balanced accuracy against m (honest sites in every sum) at epsilon 1, and
`targets.md`: for every private configuration at spent epsilon <= 1 with every seed, its
differences from local under every downstream mode and lambda metric against the issue's
targets (own test: accuracy within 0.1 of local, balanced accuracy +5, macro-F1 +2; pooled
test: accuracy +10), and whether each generative configuration beats dpfedavg at the same m
on balanced accuracy.

    .venv/bin/python experiments/fashionmnist/secure_report.py results/fashionmnist_secure \
        --out assets/fashionmnist_secure
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.collect import client_rows  # noqa: E402
from utils.io import read_json  # noqa: E402

MODES = ("mix", "prior", "joint")
METRICS = ("accuracy", "balanced_accuracy")
GENERATIVE = ("dpcvae", "dpfedpft")


def runs(root: Path) -> list[dict]:
    """Every finished run under `root`: method, m, target epsilon, seed, metrics."""
    out = []
    for path in sorted(root.rglob("metrics.json")):
        m = read_json(path)
        privacy = m.get("privacy") or {}
        secure = privacy.get("secure_aggregation") or {}
        out.append({
            "method": m["method"],
            "m": secure.get("min_honest_sites"),
            "epsilon": privacy.get("target_epsilon"),
            "seed": m["seed"],
            "metrics": m,
        })  # fmt: skip
    return out


def scores(m: dict, mode: str | None, metric: str | None) -> dict[str, float]:
    """Means over clients of own-test accuracy, balanced accuracy, macro-F1, pooled accuracy."""
    rows = client_rows(m, metric, mode)
    mean = lambda key: float(np.mean([r[key] for r in rows])) * 100  # noqa: E731
    return {
        "acc": mean("test_acc"),
        "bal": mean("test_balanced_acc"),
        "f1": mean("test_f1_macro"),
        "pooled": mean("pooled_acc"),
    }


def seed_mean(group: list[dict], mode: str | None, metric: str | None) -> dict[str, float]:
    values = [scores(r["metrics"], mode, metric) for r in group]
    return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def syn_acc(group: list[dict]) -> float | None:
    accs = [((r["metrics"].get("fidelity") or {}).get("global_synthetic") or {}).get("acc")
            for r in group]  # fmt: skip
    return None if None in accs else float(np.mean(accs)) * 100


def targets(all_runs: list[dict]) -> str:
    """targets.md: one line per (configuration, mode, metric), and the dpfedavg comparison."""
    local = [r for r in all_runs if r["method"] == "local"]
    seeds = {r["seed"] for r in local}
    base = seed_mean(local, None, None)
    groups = defaultdict(list)
    for r in all_runs:
        if r["m"] is not None and r["epsilon"] is not None and r["epsilon"] <= 1:
            groups[(r["method"], r["m"], r["epsilon"])].append(r)
    lines = [
        "# Issue 31's targets (3 seeds, spent epsilon <= 1)",
        "",
        f"local (seeds {sorted(seeds)}): acc {base['acc']:.2f}, bal {base['bal']:.2f}, "
        f"F1 {base['f1']:.2f}, pooled {base['pooled']:.2f}",
        "",
        "| configuration | seeds | mode (metric) | Δ acc | Δ bal | Δ F1 | Δ pooled | own-test "
        "target | pooled target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, m, eps), group in sorted(groups.items()):
        if {r["seed"] for r in group} != seeds:
            continue
        modes = [(None, None)] if method == "dpfedavg" else [(a, b) for a in MODES for b in METRICS]
        for mode, metric in modes:
            s = seed_mean(group, mode, metric)
            d = {k: s[k] - base[k] for k in s}
            own = d["acc"] >= -0.1 and d["bal"] >= 5 and d["f1"] >= 2
            name = "global head" if mode is None else f"{mode} ({metric})"
            lines.append(
                f"| {method}, m = {m}, ε {eps:g} | {len(group)} | {name} | {d['acc']:+.2f} | "
                f"{d['bal']:+.2f} | {d['f1']:+.2f} | {d['pooled']:+.2f} | "
                f"{'met' if own else 'missed'} | {'met' if d['pooled'] >= 10 else 'missed'} |"
            )
    lines += ["", "Best balanced accuracy against dpfedavg at the same m (3 seeds, ε 1):", ""]
    for (method, m, eps), group in sorted(groups.items()):
        rival = groups.get(("dpfedavg", m, eps))
        if method not in GENERATIVE or not rival or {r["seed"] for r in group} != seeds:
            continue
        best = max(seed_mean(group, a, b)["bal"] for a in MODES for b in METRICS)
        theirs = seed_mean(rival, None, None)["bal"]
        verdict = "beats" if best > theirs else "does not beat"
        lines.append(f"- {method}, m = {m}: best {best:.2f} vs dpfedavg {theirs:.2f}: {verdict}")
    return "\n".join(lines) + "\n"


def plot(all_runs: list[dict], out: Path) -> None:
    """Synthetic-only accuracy and balanced accuracy (joint by balanced accuracy; dpfedavg's
    global head) against m at epsilon 1, means over the seeds run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in ("dpcvae", "dpfedpft", "dpfedavg"):
        by_m = defaultdict(list)
        for r in all_runs:
            if r["method"] == method and r["epsilon"] == 1.0 and r["m"] is not None:
                by_m[r["m"]].append(r)
        ms = sorted(by_m)
        if not ms:
            continue
        if method != "dpfedavg":
            left.plot(ms, [syn_acc(by_m[m]) for m in ms], "o-", label=method)
        mode, metric = (None, None) if method == "dpfedavg" else ("joint", "balanced_accuracy")
        right.plot(ms, [seed_mean(by_m[m], mode, metric)["bal"] for m in ms], "o-", label=method)
    local = [r for r in all_runs if r["method"] == "local"]
    if local:
        right.axhline(seed_mean(local, None, None)["bal"], color="grey", ls="--", label="local")
    left.set(xlabel="m (honest sites in every sum)", ylabel="synthetic-only accuracy (%)")
    right.set(xlabel="m (honest sites in every sum)", ylabel="balanced accuracy (%)")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Fashion-MNIST, 10 sites, epsilon 1: noise shares under secure aggregation")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="secure_study.sh's results folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of the plot and targets")
    args = parser.parse_args()
    all_runs = runs(args.results)
    if not all_runs:
        parser.error(f"{args.results}: no finished run")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.md").write_text(targets(all_runs))
    plot(all_runs, args.out / "secure_aggregation.png")
    print(f"wrote {args.out / 'targets.md'} and {args.out / 'secure_aggregation.png'}")


if __name__ == "__main__":
    main()
