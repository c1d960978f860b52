"""A run directory's lifecycle, shared by main.py's runs and the Flower ServerApp: the run's
configuration and directory (`describe_run`), opening it and writing config.json (`open_run`),
closing it with history.csv and metrics.json (`close_run`, metrics.json last: a finished run),
and removing what a failed run wrote (`discard_unfinished`). One place, so that every path
refuses, resumes and finishes a run directory the same way.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from algorithms.evaluation.downstream import summarize_rows
from algorithms.evaluation.protocol import Evaluation, Outcome
from algorithms.flags import spelling
from algorithms.methods.registry import Method
from algorithms.options import Settings, present_configs
from algorithms.privacy.accounting import group_privacy_warning, over_budget_warning
from algorithms.report import chance_warning, empty_synthetic_warning
from utils.cli import check_output
from utils.device import describe_device
from utils.io import read_json, sha256_file
from utils.provenance import versions
from utils.results import (
    CONFIG_FILE,
    HISTORY_FILE,
    ResultsError,
    config_key,
    default_run_dir,
    is_finished,
    prepare_run_dir,
    write_config,
    write_history,
    write_metrics,
)

# The folder of a run directory that holds the checkpoint of an unfinished federated run.
CHECKPOINT_DIR = "checkpoint"
SYNTHETIC_FILE = "synthetic.npz"  # --save_synthetic


@dataclass(frozen=True)
class DataFacts:
    """What a run's configuration records of its data: names and hashes, never rows or counts.
    Under Flower each site reports its own (the ServerApp opens no split file) and a fact on
    which the sites differ (their own split files) is a list in client order."""

    dataset: str
    backbone: str
    fingerprint: str | list
    split_file: str | list
    split_sha256: str | list
    split_args: dict  # {"sites": [...]} when the sites' own split files differ


def data_facts(meta: dict, database_root: str | Path, split: dict, split_path: Path) -> DataFacts:
    """The facts of a database (its meta.json) and of one split file."""
    return DataFacts(
        dataset=str(meta.get("dataset", Path(database_root).name)),
        backbone=str(meta.get("backbone", "unknown")),
        fingerprint=split["database"]["fingerprint"],
        split_file=str(split_path),
        split_sha256=sha256_file(split_path),
        split_args=split["args"],
    )


@dataclass(frozen=True)
class RunFiles:
    """Where a run writes and what names it. `finished`: --skip_existing (or --resume) found a
    finished run there, and nothing was written."""

    run_dir: Path
    method: Method
    key: str
    dataset: str
    backbone: str
    finished: bool = False
    dp_on: bool = False  # the run shares DP releases (a private method with DP on)


def discard_unfinished(run_dir: Path, remove_folder: bool) -> None:
    """After a failed run, remove what it wrote (config.json, history.csv, synthetic.npz; the
    folder when this run made it and it is empty), so that nothing half-written is left; a run
    with a checkpoint is kept whole, for --resume."""
    if (run_dir / CHECKPOINT_DIR).exists():
        return
    for name in (CONFIG_FILE, HISTORY_FILE, SYNTHETIC_FILE):
        (run_dir / name).unlink(missing_ok=True)
    if remove_folder and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def describe_run(settings: Settings, facts: DataFacts) -> tuple[dict, Path]:
    """The run's configuration (whose hash names its directory) and its directory, from the
    flags and the data's facts (no embeddings, no split)."""
    args = settings.args
    dataset, backbone = facts.dataset, facts.backbone
    config = {
        "method": settings.method.name,
        "database_root": str(Path(args.database_root).resolve()),
        # what identifies the data in the config hash: not its path, but its content
        "database": {
            "dataset": dataset,
            "backbone": backbone,
            "fingerprint": facts.fingerprint,
        },
        **{name: asdict(cfg) for name, cfg in present_configs(settings.configs).items()},
        "weights_grid_resolution": args.weights_grid_resolution,
    }
    run_dir = (
        Path(args.results_dir)
        if args.results_dir
        else default_run_dir(
            root=args.results_root,
            dataset=dataset,
            backbone=backbone,
            method=settings.method.name,
            config=config,
            seed=settings.seed,
        )
    )
    return config, run_dir


def shares_dp(settings: Settings) -> bool:
    """Whether the run shares only DP releases: a private method with DP on."""
    dp = settings.configs.dp
    return settings.method.private and dp is not None and dp.enabled


def open_run(settings: Settings, facts: DataFacts) -> RunFiles:
    """Create the run directory and write config.json.

    A finished run there is refused (kept with --skip_existing or --resume, replaced with
    --overwrite); so is an interrupted one, unless --resume continues it (its config.json must
    name the same configuration and seed) or --overwrite starts over."""
    args = settings.args
    config, run_dir = describe_run(settings, facts)
    dataset, backbone = config["database"]["dataset"], config["database"]["backbone"]
    key = config_key(config)
    method = settings.method
    flag = spelling("results_dir" if args.results_dir else "results_root")
    check_output(run_dir, flag, folder=True)
    if args.resume and (run_dir / CONFIG_FILE).is_file():
        check_same_run(run_dir, key, settings.seed)
    if (args.skip_existing or args.resume) and is_finished(run_dir):
        print(f"skipping: {run_dir} holds a finished run", file=sys.stderr)
        return RunFiles(run_dir, method, key, dataset, backbone, True, shares_dp(settings))
    checkpoint = run_dir / CHECKPOINT_DIR
    if checkpoint.exists() and not (args.resume or args.overwrite):
        raise ResultsError(
            f"{run_dir}: holds an interrupted run ({checkpoint}); pass {spelling('resume')} to "
            f"continue it or {spelling('overwrite')} to start over"
        )
    if args.overwrite:
        shutil.rmtree(checkpoint, ignore_errors=True)
    replace = f"pass {spelling('overwrite')} to replace it or choose another {flag}"
    run_dir = prepare_run_dir(run_dir, args.overwrite, remedy=replace)
    if args.resume and (run_dir / CONFIG_FILE).is_file():
        return RunFiles(run_dir, method, key, dataset, backbone, dp_on=shares_dp(settings))
    write_config(
        run_dir,
        {
            **config,
            "config_key": key,
            "seed": settings.seed,
            "split_file": facts.split_file,
            "split_sha256": facts.split_sha256,
            "argv": list(settings.argv),
            "execution": {
                **describe_device(settings.execution.device),
                "vectorized": settings.execution.vectorized,
            },
            "versions": versions(),
        },
    )
    return RunFiles(run_dir, method, key, dataset, backbone, dp_on=shares_dp(settings))


def check_same_run(run_dir: Path, key: str, seed: int) -> None:
    """Refuse to resume a run directory whose config.json names another configuration or seed."""
    path = run_dir / CONFIG_FILE
    try:
        config = read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise ResultsError(str(err)) from None
    old = (config.get("config_key"), config.get("seed")) if isinstance(config, dict) else None
    if old != (key, seed):
        raise ResultsError(
            f"{path}: holds another run (config_key, seed = {old}, these flags give "
            f"{(key, seed)}); {spelling('resume')} needs the flags of the interrupted run"
        )


def close_run(
    *,
    run: RunFiles,
    seed: int,
    split_args: dict,
    evaluation: Evaluation,
    outcome: Outcome,
    wall: float,
) -> None:
    """history.csv, then metrics.json (the last file: its presence marks a finished run).

    metrics.json also records whether what this run shared is private (`private`: a private
    method, and DP not switched off), so that tables and plots are made from results files
    alone (they take the methods' order from the registry when they are made).

    Args:
        run: the run's directory and what names it.
        seed: the run seed.
        split_args: the split's settings as metrics.json records them.
        evaluation: the clients' test rows and the lambda protocol.
        outcome: what the method returned (history, privacy, fidelity, parameters shared).
        wall: the run's training time in seconds (resumed runs included).
    """
    method = run.method
    if run.dp_on and outcome.privacy is None:
        raise RuntimeError(
            f"{method.name} is private but its run has no privacy report: a DP run without "
            "accounting is an error, never epsilon 0"
        )
    dp_off = outcome.privacy is not None and not outcome.privacy["enabled"]
    metrics = {
        "method": method.name,
        "private": method.private and not dp_off,
        "dataset": run.dataset,
        "backbone": run.backbone,
        "seed": seed,
        "config_key": run.key,
        "split": split_args,
        "clients": evaluation.rows,
        # a simulation's rows hold each client's exact split sizes (the researcher holds every
        # client); a Flower site sends none (fl/client_app.py)
        "counts": (
            "exact (simulation)"
            if evaluation.rows and all("n_train" in row for row in evaluation.rows)
            else "absent (deployment)"
        ),
        "summary": summarize_rows(evaluation.rows),
        "lambda": evaluation.lam,
        "lambda_val_acc": evaluation.val_acc,
        "lambda_metric": evaluation.metric if evaluation.protocol else None,
        "lambda_protocol": evaluation.protocol,
        # every downstream mode under every lambda metric (evaluation/downstream.py); the rows
        # above are those of `downstream`
        "downstream": evaluation.downstream,
        "downstream_modes": evaluation.modes,
        **({"withheld": evaluation.withheld} if evaluation.withheld else {}),
        "privacy": outcome.privacy,
        "fidelity": outcome.fidelity,
        "cost": {
            "wall_seconds": wall,
            "params_shared": outcome.params_shared,
            "bytes_per_round": 4 * outcome.params_shared,
            "params_model": outcome.params_model,
        },
    }
    warnings_ = [over_budget_warning(outcome.privacy) if outcome.privacy else None]
    warnings_.append(group_privacy_warning(outcome.privacy) if outcome.privacy else None)
    warnings_.append(chance_warning(bool(metrics["private"]), outcome.fidelity))
    warnings_.append(empty_synthetic_warning(outcome.fidelity))
    for warning in filter(None, warnings_):
        print(f"warning: {warning}", file=sys.stderr)
    write_history(run.run_dir, outcome.history)
    write_metrics(run.run_dir, metrics)
