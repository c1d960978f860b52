"""Build the paper's table from run directories (their metrics.json files), never from logs.

    python -m utils.collect results/digits [more dirs...] [--out DIR] [--name table]

Runs are grouped by configuration (all seeds of one configuration form one row). Per client,
each metric is averaged over seeds; the row shows the mean +- std of those across clients.
Rows follow the method registry's order, read when the table is made (results carry none).
Writes `<name>.md` and `<name>.csv` and prints the Markdown table. "Syn. acc" is the accuracy of
a head trained on the global model's synthetic data alone, on the pooled real test data
(train on synthetic, test on real), marked "(chance)" when within noise of chance (1 / the
number of classes), and "empty" where a run's synthetic set was empty (then W-dist too). "Pooled
acc" is each client's model on the pooled test data of every client (patients unlike its own),
averaged like the other metrics; a Flower deployment has no pooled data ("-").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.cli import OutputError, Parser, check_output
from utils.io import read_json
from utils.metrics import CLASSIFICATION_METRICS
from utils.results import (
    CONFIG_FILE,
    METRICS_FILE,
    ResultsError,
    display_key,
    epsilon_spent,
    privacy_unit_mark,
    read_metrics,
    secure_mark,
)
from utils.table import to_markdown, write_table

# the downstream modes that runs report (algorithms/evaluation/downstream.py), and the prefix of the
# pooled-test metrics in their rows
DOWNSTREAM_MODES = ("mix", "prior", "joint")
POOLED = "pooled_"


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (folders holding metrics.json) under the given paths, sorted."""
    runs = set()
    for p in map(Path, paths):
        if not p.exists():
            raise ResultsError(f"{p}: no such file or directory")
        if (p / METRICS_FILE).is_file():
            runs.add(p)
        runs.update(m.parent for m in p.rglob(METRICS_FILE))
    if not runs:
        raise ResultsError(
            f"no finished run (no {METRICS_FILE}) under {', '.join(map(str, paths))}"
        )
    return sorted(runs)


def read_config(run_dir: Path) -> dict:
    """A run's config.json ({} when there is none); ResultsError when it is unreadable."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        config = read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise ResultsError(str(err)) from None
    if not isinstance(config, dict):
        raise ResultsError(f"{path}: must be a JSON object")
    return config


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# config.json keys that name a variant of a method (a preset sets many others with it).
LABEL_KEYS = (
    "generative.preset",
    "generative.cvae_loss",
    "generative.cvae_lr",
    "dp.enabled",
    "dp.epsilon",
    "dp.min_honest_sites",
    "dp.privacy_unit",
)


def _labels(groups: dict[str, list[dict]]) -> dict[str, str]:
    """Row labels: the method, plus the settings that tell apart rows of the same method."""
    by_method = defaultdict(list)
    for key, runs in groups.items():
        by_method[runs[0]["metrics"]["method"]].append(key)
    labels = {}
    for method, keys in by_method.items():
        if len(keys) == 1:
            labels[keys[0]] = method
            continue
        flat = {k: _flatten(groups[k][0]["config"]) for k in keys}
        names = sorted(set().union(*flat.values()))
        differing = [n for n in names if len({repr(flat[k].get(n)) for k in keys}) > 1]
        # the settings that name a variant, when they alone tell the rows apart
        short = [n for n in LABEL_KEYS if n in differing]
        if len({tuple(repr(flat[k].get(n)) for n in short) for k in keys}) == len(keys):
            differing = short
        for k in keys:
            parts = [f"{n.split('.')[-1]}={flat[k].get(n)}" for n in differing]
            labels[k] = f"{method} ({', '.join(parts)})" if parts else f"{method} [{k}]"
    return labels


def _block(metrics: dict, lambda_metric: str | None, downstream: str | None) -> dict | None:
    """The block of a run's `downstream_modes` (older runs: `lambda_protocol`, the mix mode)
    for `downstream` under `lambda_metric` (None: the run's own); None for a run with one
    model."""
    modes = metrics.get("downstream_modes")
    protocol = metrics.get("lambda_protocol")
    if not (modes or protocol):
        return None
    mode = downstream or metrics.get("downstream") or "mix"
    metric = lambda_metric or metrics.get("lambda_metric") or "accuracy"
    blocks: dict = modes if modes else {"mix": protocol}
    if mode not in blocks:
        raise ResultsError(
            f"{metrics.get('method')}: downstream mode {mode!r} is not in {sorted(blocks)}"
        )
    if metric not in blocks[mode]:
        raise ResultsError(f"lambda metric {metric!r} is not in {sorted(blocks[mode])}")
    return blocks[mode][metric]


def _lambda(
    metrics: dict, lambda_metric: str | None, downstream: str | None = None
) -> float | None:
    """The run's chosen lambda (or joint weight) for its table rows."""
    block = _block(metrics, lambda_metric, downstream)
    if block is None:
        return metrics["lambda"]
    return block.get("lambda", block.get("weight"))


def _mode(metrics: dict, downstream: str | None) -> str | None:
    """The downstream mode of a run's table rows (None: a run with one model)."""
    if not (metrics.get("downstream_modes") or metrics.get("lambda_protocol")):
        return None
    return downstream or metrics.get("downstream") or "mix"


def _synthetic_only(ms: list[dict]) -> dict[str, Any]:
    """The synthetic data's own accuracy, averaged over seeds: of the global model's synthetic
    data on the pooled test data (`syn_acc`), of each client's (`syn_acc_client`), whether any
    seed's global synthetic data was within noise of chance (1/C: the global model's own
    `at_chance`, not the clients' majority-class rates), and whether any seed's synthetic data
    was empty (`syn_empty`: a client's, or the global model's). None for runs without it."""
    fids = [m.get("fidelity") or {} for m in ms]
    globs = [f["global_synthetic"] for f in fids if f.get("global_synthetic")]
    glob = [g["acc"] for g in globs if g.get("acc") is not None]
    client = [f["synthetic_acc_mean"] for f in fids if f.get("synthetic_acc_mean") is not None]
    complete = len(glob) == len(ms)
    return {
        "syn_acc": float(np.mean(glob)) if complete else None,
        "syn_acc_client": float(np.mean(client)) if len(client) == len(ms) else None,
        "syn_at_chance": any(bool(g.get("at_chance")) for g in globs) if complete else None,
        "syn_empty": any(bool(g.get("empty")) for g in globs)
        or any(f.get("synthetic_empty") for f in fids),
    }


def _epsilon_spent(ms: list[dict]) -> float | None:
    """Largest spent epsilon over clients and seeds (see utils.results.epsilon_spent); None
    when a run does not say."""
    eps = [epsilon_spent(m) for m in ms]
    known = [e for e in eps if e is not None]
    return float(max(known)) if len(known) == len(eps) else None


def _group_key(run_dir: Path, metrics: dict, config: dict) -> str:
    return str(metrics.get("config_key") or config.get("config_key") or run_dir.parent)


def client_rows(
    metrics: dict, lambda_metric: str | None = None, downstream: str | None = None
) -> list[dict]:
    """A run's per-client test rows: those of its table (its --downstream mode at the value
    its --lambda_metric chose), or those of mode `downstream` at the value `lambda_metric`
    chooses (runs that mix two heads report every mode under every metric; the others have
    one set of rows)."""
    block = _block(metrics, lambda_metric, downstream)
    return metrics["clients"] if block is None else block["clients"]


def _seed_mean(values: pd.Series) -> float:
    """numpy's mean of one client's values over seeds: pandas' own groupby mean sums with
    compensation and can differ in the last bit, which would change the written tables."""
    return np.mean(values.to_numpy())


def _per_client_means(runs: list[list[dict]]) -> pd.DataFrame:
    """Each test metric (and pooled-test metric, where every row has it) averaged over seeds
    per client id (rows in first-seen id order), from each seed's client rows."""
    columns = [f"test_{name}" for name in CLASSIFICATION_METRICS]
    if all(f"{POOLED}acc" in c for rows in runs for c in rows):
        columns += [f"{POOLED}{name}" for name in CLASSIFICATION_METRICS]
    frame = pd.DataFrame(
        [{"id": c["id"], **{col: c[col] for col in columns}} for rows in runs for c in rows]
    )
    return frame.groupby("id", sort=False)[columns].agg(_seed_mean)


def collect(
    paths: list[str | Path],
    lambda_metric: str | None = None,
    downstream: str | None = None,
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per configuration with the across-client mean/std of seed-averaged metrics
    (`lambda_metric`, `downstream`: the rows of that mode at the value chosen by that metric,
    see `client_rows`), rows in the method order `order` (`display_key`)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run_dir in find_runs(paths):
        metrics = read_metrics(run_dir)
        config = read_config(run_dir)
        groups[_group_key(run_dir, metrics, config)].append(
            {"dir": run_dir, "metrics": metrics, "config": config}
        )
    labels = _labels(groups)
    keyed = []
    for key, runs in groups.items():
        ms = [r["metrics"] for r in runs]
        row: dict[str, Any] = {
            "method": labels[key],
            "seeds": len(ms),
            "clients": len(ms[0]["clients"]),
        }
        per_client = _per_client_means([client_rows(m, lambda_metric, downstream) for m in ms])
        for name in CLASSIFICATION_METRICS:
            means = per_client[f"test_{name}"].to_numpy()
            row[f"{name}_mean"] = float(means.mean())
            row[f"{name}_std"] = float(means.std())
        pooled = per_client.get(f"{POOLED}acc")
        row["pooled_acc_mean"] = None if pooled is None else float(pooled.to_numpy().mean())
        row["pooled_acc_std"] = None if pooled is None else float(pooled.to_numpy().std())
        wass = [
            m["fidelity"]["wasserstein_mean"]
            for m in ms
            if isinstance(m.get("fidelity"), dict)
            and m["fidelity"].get("wasserstein_mean") is not None
        ]
        row["wasserstein"] = float(np.mean(wass)) if wass else None
        row.update(_synthetic_only(ms))
        row["epsilon_spent"] = _epsilon_spent(ms)
        row["privacy_unit"] = privacy_unit_mark(ms[0])
        row["secure_aggregation"] = secure_mark(ms[0])
        lams = [_lambda(m, lambda_metric, downstream) for m in ms]
        known = [lam for lam in lams if lam is not None]
        row["lambda"] = float(np.mean(known)) if len(known) == len(lams) else None
        row["downstream"] = _mode(ms[0], downstream)
        row["params_shared"] = int(ms[0]["cost"]["params_shared"])
        row["bytes_per_round"] = int(ms[0]["cost"]["bytes_per_round"])
        row["wall_seconds"] = float(np.mean([m["cost"]["wall_seconds"] for m in ms]))
        keyed.append(((display_key(ms[0]["method"], order), row["method"]), row))
    return [row for _, row in sorted(keyed, key=lambda kr: kr[0])]


def method_order() -> tuple[str, ...]:
    """The method registry's order, read when a table or plot is made. Only the command lines
    (entry points) call this: the functions of utils take the order as an argument and import
    nothing from algorithms."""
    from algorithms.methods.registry import NAMES

    return tuple(NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="run directories or folders above them")
    parser.add_argument(
        "--out", default=None, help="folder for the table files. Default: the first results folder"
    )
    parser.add_argument("--name", default="table", help="file name stem. Default: table")
    parser.add_argument(
        "--lambda_metric",
        choices=("accuracy", "balanced_accuracy"),
        default=None,
        help="for methods that mix two heads: the rows at the lambda that this validation "
        "metric chooses (every run reports both). Default: each run's own --lambda_metric",
    )
    parser.add_argument(
        "--downstream",
        choices=DOWNSTREAM_MODES,
        default=None,
        help="for methods that mix two heads: the rows of this downstream mode (mix: the "
        "paper's lambda mix; prior: the global head corrected to each client's label prior, "
        "then mixed; joint: one head on real plus synthetic data). Every run reports every "
        "mode. Default: each run's own --downstream",
    )
    args = parser.parse_args(argv)
    out = Path(args.out or args.results[0])
    try:
        if Path(args.name).name != args.name or args.name in ("", ".", ".."):
            raise OutputError(f"--name {args.name!r}: a file name stem, not a path")
        check_output(out, "--out", folder=True)
        rows = collect(args.results, args.lambda_metric, args.downstream, method_order())
        md, csv = write_table(rows, out, args.name)
    except (ResultsError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: --out {out}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 2
    print(to_markdown(rows))
    print(f"\nwrote {md} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
