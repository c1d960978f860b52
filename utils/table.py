"""The table that `python -m utils.collect` makes, as text: its Markdown (`to_markdown`: the
percentages as mean +- std across clients, "-" where a run has no such number) and its two files
(`write_table`: `<name>.md` and `<name>.csv`, written atomically). utils/collect.py makes the rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.io import atomic_path, write_csv

METRIC_TITLES = {
    "acc": "Acc (%)",
    "balanced_acc": "Bal. acc (%)",
    "f1_macro": "F1 macro (%)",
    "f1_weighted": "F1 weighted (%)",
}


def _syn_text(r: dict[str, Any]) -> str:
    if r.get("syn_acc") is None:
        return "empty" if r.get("syn_empty") else "-"
    return f"{100 * r['syn_acc']:.2f}" + (" (chance)" if r["syn_at_chance"] else "")


def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "-"
    return "∞" if eps == float("inf") else "0" if eps == 0 else f"{eps:.3f}"


def _wasserstein_text(r: dict[str, Any]) -> str:
    if r["wasserstein"] is None:
        return "empty" if r.get("syn_empty") else "-"
    return f"{r['wasserstein']:.4f}"


def _pooled_text(r: dict[str, Any]) -> str:
    if r.get("pooled_acc_mean") is None:
        return "-"
    return f"{100 * r['pooled_acc_mean']:.2f} ± {100 * r['pooled_acc_std']:.2f}"


def _lambda_text(r: dict[str, Any]) -> str:
    """The chosen lambda; for the joint mode the synthetic weight, as (w 0.30)."""
    if r["lambda"] is None:
        return "-"
    return f"(w {r['lambda']:.2f})" if r.get("downstream") == "joint" else f"{r['lambda']:.2f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown: percentages as mean +- std across clients."""
    head = [
        "Method",
        *METRIC_TITLES.values(),
        "Pooled acc (%)",
        "W-dist",
        "Syn. acc (%)",
        "λ (w)",
        "eps spent",
        "Shared params",
        "Bytes/round",
        "Time (s)",
        "Seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"]]
        cells += [f"{100 * r[f'{n}_mean']:.2f} ± {100 * r[f'{n}_std']:.2f}" for n in METRIC_TITLES]
        cells += [
            _pooled_text(r),
            _wasserstein_text(r),
            _syn_text(r),
            _lambda_text(r),
            _eps_text(r["epsilon_spent"])
            + "".join(f" ({r[k]})" for k in ("privacy_unit", "secure_aggregation") if r.get(k)),
            f"{r['params_shared']:,}",
            f"{r['bytes_per_round']:,}",
            f"{r['wall_seconds']:.1f}",
            str(r["seeds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(
    rows: list[dict[str, Any]], out_dir: str | Path, name: str = "table"
) -> tuple[Path, Path]:
    """Write `<name>.md` and `<name>.csv` into `out_dir`, atomically."""
    out_dir = Path(out_dir)
    md, csv = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(rows) + "\n")
    write_csv(csv, rows)
    return md, csv
