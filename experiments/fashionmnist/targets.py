"""The study's targets, from its tables: each private row at spent epsilon <= 1 with every seed,
against local, under every downstream mode and lambda metric (the same mode for every method).

    .venv/bin/python experiments/fashionmnist/targets.py assets/fashionmnist_study [--out F.md]

Reads the `table_<mode>_<accuracy|balanced>.csv` files that study.sh writes with
`python -m utils.collect`. A row meets the targets when its accuracy is at least local's, its
balanced accuracy and macro-F1 at least 2 points above, and its pooled-test accuracy at least 10
points above; prints one line per (mode, metric, row) with the differences in points, and the
best mode per metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

MODES = ("mix", "prior", "joint")
METRICS = {"accuracy": "accuracy", "balanced": "balanced_accuracy"}
# (column, the target's margin over local in points)
TARGETS = (
    ("acc_mean", 0.0),
    ("balanced_acc_mean", 2.0),
    ("f1_macro_mean", 2.0),
    ("pooled_acc_mean", 10.0),
)


def differences(folder: Path, seeds: int = 3, max_epsilon: float = 1.0) -> pd.DataFrame:
    """One row per (mode, lambda metric, private configuration) with its gains over local."""
    out = []
    for mode in MODES:
        for stem, metric in METRICS.items():
            path = folder / f"table_{mode}_{stem}.csv"
            if not path.is_file():
                raise SystemExit(f"error: {path}: missing (run experiments/fashionmnist/study.sh)")
            table = pd.read_csv(path)
            local = table[table["method"] == "local"].iloc[0]
            private = table[
                (table["epsilon_spent"] <= max_epsilon)
                & (table["epsilon_spent"] > 0)
                & (table["seeds"] >= seeds)
            ]
            for _, row in private.iterrows():
                gains = {col: 100 * (row[col] - local[col]) for col, _ in TARGETS}
                met = all(gains[col] >= margin for col, margin in TARGETS)
                out.append(
                    {
                        "mode": mode,
                        "lambda_metric": metric,
                        "method": row["method"],
                        "epsilon": row["epsilon_spent"],
                        **gains,
                        "met": met,
                    }
                )
    return pd.DataFrame(out)


def to_markdown(frame: pd.DataFrame) -> str:
    head = (
        "| mode | lambda by | method | ε | Δ acc | Δ bal. acc | Δ F1 macro | Δ pooled acc "
        "| all met |"
    )
    lines = [head, "|" + "---|" * 9]
    for _, r in frame.iterrows():
        lines.append(
            f"| {r['mode']} | {r['lambda_metric']} | {r['method']} | {r['epsilon']:.3f} | "
            + " | ".join(f"{r[c]:+.2f}" for c, _ in TARGETS)
            + f" | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def best_modes(frame: pd.DataFrame) -> str:
    """The best (mode, lambda metric, method) per metric, by its gain over local."""
    lines = []
    for col, _ in TARGETS:
        best = frame.loc[frame[col].idxmax()]
        lines.append(
            f"- best {col.removesuffix('_mean')}: {best['mode']} (lambda by "
            f"{best['lambda_metric']}), {best['method']}: {best[col]:+.2f} points"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the study's output folder (its tables)")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    frame = differences(args.folder)
    if frame.empty:
        print("error: no private row at epsilon <= 1 with 3 seeds", file=sys.stderr)
        return 2
    text = to_markdown(frame) + "\n\n" + best_modes(frame) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
