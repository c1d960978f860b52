"""The one results writer: each run directory holds `config.json`, `history.csv` and
`metrics.json` (written last, so its presence marks a finished run). Tables and plots are
built from these files only."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.io import read_json, write_csv, write_json
from utils.metrics import CLASSIFICATION_METRICS

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"

# Keys of config that do not change what a run computes (so they do not name its directory).
NON_RESULT_KEYS = (
    "seed",
    "results_dir",
    "overwrite",
    "resume",
    "device",
    "quiet",
    "database_root",
)
# Config fields added after runs were made, (section, field): value. A field is hashed only
# when it differs from this value, so every finished run keeps its key.
KEYED_WHEN_NOT = {
    ("dp", "privacy_unit"): "auto",
    ("dp", "secure_aggregation"): False,
    ("dp", "min_honest_sites"): 1,
}


class ResultsError(ValueError):
    """A results directory or file is missing, invalid, or would be overwritten."""


def config_key(config: dict[str, Any]) -> str:
    """Short hash of everything in `config` that changes results, except the seed."""
    relevant = {k: v for k, v in sorted(config.items()) if k not in NON_RESULT_KEYS}
    for (section, name), value in KEYED_WHEN_NOT.items():
        part = relevant.get(section)
        if isinstance(part, dict) and name in part and part[name] == value:
            relevant[section] = {k: v for k, v in part.items() if k != name}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_run_dir(
    *, root: str | Path, dataset: str, backbone: str, method: str, config: dict[str, Any], seed: int
) -> Path:
    """`<root>/<dataset>/<backbone>/<method>-<config hash>/seed_<seed>`: no timestamps, so the
    same configuration always maps to the same directory and seeds sit side by side.

    Args:
        root: the results root.
        dataset: the dataset's name.
        backbone: the backbone's name ("/" becomes "_").
        method: the method's name.
        config: the run's configuration (its hash names the folder).
        seed: the run seed.
    """
    safe_backbone = backbone.replace("/", "_")
    return Path(root) / dataset / safe_backbone / f"{method}-{config_key(config)}" / f"seed_{seed}"


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()


def prepare_run_dir(run_dir: str | Path, overwrite: bool, remedy: str = "") -> Path:
    """Create the run directory; refuse a finished run unless `overwrite`, which clears it.
    `remedy`: what the refusal tells the user to do (the caller knows its flags)."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        if not overwrite:
            raise ResultsError(
                f"{run_dir}: holds a finished run ({METRICS_FILE} exists)"
                + (f"; {remedy}" if remedy else "")
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    write_json(Path(run_dir) / CONFIG_FILE, config)


def write_history(run_dir: str | Path, rows: list[dict]) -> None:
    """One row per round; columns are the union of the rows' keys."""
    write_csv(Path(run_dir) / HISTORY_FILE, rows, fieldnames=None if rows else ["round"])


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Validate and write metrics.json (the last file of a run)."""
    validate_metrics(metrics, source=str(Path(run_dir) / METRICS_FILE))
    write_json(Path(run_dir) / METRICS_FILE, metrics)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """Read and validate a run's metrics.json."""
    path = Path(run_dir) / METRICS_FILE if Path(run_dir).is_dir() else Path(run_dir)
    try:
        metrics = read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise ResultsError(str(err)) from None
    validate_metrics(metrics, source=str(path))
    return metrics


def display_key(method: str, order: Sequence[str]) -> tuple[float, str]:
    """Where a run's method goes in tables and plots: its place in `order` (the method
    registry's names, read when the table is made: results carry no presentation), then its
    name; a method not in `order` comes last. A `display_order` that older metrics.json files
    still hold is ignored."""
    return (order.index(method) if method in order else math.inf, method)


def epsilon_spent(metrics: dict[str, Any]) -> float | None:
    """The largest epsilon a run's clients spent: from its privacy accounting; 0 when it is
    private without accounting (it shares nothing); infinite when it shares without DP; None
    when its file does not say (written before `private` was recorded)."""
    privacy = metrics.get("privacy")
    if isinstance(privacy, dict) and privacy.get("enabled"):
        return float(max(c["epsilon"] for c in privacy["clients"]))
    if "private" not in metrics:
        return None
    return 0.0 if metrics["private"] else math.inf


def secure_mark(metrics: dict[str, Any]) -> str:
    """A run with noise shares under secure aggregation, for tables: "m = M, collusion E" (its
    epsilon holds while M honest sites are in every sum; E: against a coordinator colluding
    with every other site); "" otherwise."""
    privacy = metrics.get("privacy")
    secure = privacy.get("secure_aggregation") if isinstance(privacy, dict) else None
    if not secure:
        return ""
    return f"m = {secure['min_honest_sites']}, collusion {secure['epsilon_collusion_max']:.3g}"


def privacy_unit_mark(metrics: dict[str, Any]) -> str:
    """What a private run's epsilon is per, for tables: "" per record on data without patient
    ids; "patient"; or "record, k <= K" on data with patient ids (its largest patient has K
    records, so the per-patient bound is much weaker: see its privacy block)."""
    privacy = metrics.get("privacy")
    if not (isinstance(privacy, dict) and privacy.get("enabled")):
        return ""
    if privacy.get("unit") == "patient":
        return "patient"
    group = privacy.get("group_privacy")
    return f"record, k <= {group['k']}" if group else ""


def _require(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise ResultsError(f"{source}: {what}")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate_metrics(m: Any, source: str = "metrics") -> None:
    """Check the metrics.json schema (later stages add keys; these must always be there)."""
    _require(isinstance(m, dict), source, "must be a JSON object")
    for key, kind in (
        ("method", str),
        ("dataset", str),
        ("backbone", str),
        ("seed", int),
        ("split", dict),
        ("clients", list),
        ("summary", dict),
        ("cost", dict),
    ):
        _require(isinstance(m.get(key), kind), source, f"'{key}' must be a {kind.__name__}")
    for key in ("lambda", "privacy"):
        _require(key in m, source, f"missing key '{key}'")
    # written by every run since the method registry (older files lack it)
    _require(isinstance(m.get("private", False), bool), source, "'private' must be true or false")
    _require(
        m["lambda"] is None or _is_num(m["lambda"]), source, "'lambda' must be a number or null"
    )
    _require(
        m["privacy"] is None or isinstance(m["privacy"], dict),
        source,
        "'privacy' must be an object or null",
    )
    _require(len(m["clients"]) > 0 or bool(m.get("withheld")), source, "'clients' is empty")
    for c in m["clients"]:
        _require(isinstance(c.get("id"), int), source, "client 'id' must be an integer")
        for key in ("n_train", "n_val", "n_test"):  # absent in a Flower deployment's results
            _require(
                key not in c or isinstance(c[key], int),
                source,
                f"client '{key}' must be an integer",
            )
        for name in CLASSIFICATION_METRICS:
            v = c.get(f"test_{name}")
            _require(
                _is_num(v) and 0.0 <= v <= 1.0,
                source,
                f"client {c.get('id')} 'test_{name}' must be a fraction in [0, 1], got {v!r}",
            )
    for name in CLASSIFICATION_METRICS if m["clients"] else ():  # none: the sites kept them
        for stat in ("mean", "std", "weighted"):
            key = f"test_{name}_{stat}"
            if stat == "weighted" and not all("n_test" in c for c in m["clients"]):
                continue  # no test sizes (a Flower deployment), no weighted mean
            _require(_is_num(m["summary"].get(key)), source, f"summary '{key}' must be a number")
    for key in ("wall_seconds", "params_shared", "bytes_per_round"):
        _require(_is_num(m["cost"].get(key)), source, f"cost '{key}' must be a number")
