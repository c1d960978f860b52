"""One run's lifecycle, for main.py and the Flower apps: load the data, open the run directory
and write config.json, run the method through the registry, and close the run with history.csv
and metrics.json (written last: its presence marks a finished run).

A federated method writes its state after every round into checkpoint/ in the run directory;
`--resume` continues from it to the results an uninterrupted run gives, and the checkpoint is
removed when the run finishes. A --secure_noise run is never checkpointed: the checkpoint
would hold its private generator states (`secure_noise`).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from algorithms.evaluation.downstream import evaluate_clients, summarize_rows
from algorithms.evaluation.protocol import Evaluation, Outcome
from algorithms.flags import spelling
from algorithms.methods.registry import Configs, Method, RunContext
from algorithms.options import Settings, UsageError, check_before_run, present_configs
from algorithms.privacy.accounting import (
    delta_warning,
    group_privacy_warning,
    over_budget_warning,
    with_patients,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_client import privacy_unit
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.report import chance_warning, empty_synthetic_warning
from data.clients import ClientData, client_datasets, pooled_test, training_patients
from data.database import Database, DatabaseError, load_database
from data.features import squash
from data.partition import load_or_make_split
from data.split_config import SplitError
from utils.checkpoint import CheckpointError, RoundCheckpoint
from utils.cli import OutputError, check_output, flag_name
from utils.device import describe_device
from utils.io import read_json, save_npz, sha256_file
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
# What a run refuses with one line naming the flag or file (entry points exit with status 2).
RUN_ERRORS = (UsageError, DatabaseError, SplitError, ResultsError, CheckpointError, OutputError)


@dataclass(frozen=True)
class RunData:
    """The data of a run: the database, its split (and the file holding it), the clients."""

    db: Database
    split: dict
    split_path: Path
    clients: list[ClientData]


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


def run(settings: Settings) -> Path:
    """Set everything up (all input checks happen before any output), run, write results;
    returns the run directory."""
    check_before_run(settings)
    data = load_run_data(settings)
    facts = data_facts(data.db.meta, settings.args.database_root, data.split, data.split_path)
    existed = describe_run(settings, facts)[1].exists()
    files = open_run(settings, facts)
    if files.finished:
        return files.run_dir
    try:
        return run_opened(settings, data, facts, files)
    except BaseException:
        discard_unfinished(files.run_dir, remove_folder=not existed)
        raise


def run_opened(settings: Settings, data: RunData, facts: DataFacts, files: RunFiles) -> Path:
    """Run the method in the run directory `open_run` made, and close the run."""
    execution = settings.execution
    checkpoint = RoundCheckpoint(
        files.run_dir / CHECKPOINT_DIR,
        # a checkpoint holds the device's random generators and one path's state
        {
            "config_key": files.key,
            "seed": settings.seed,
            "device": execution.device,
            "vectorized": execution.vectorized,
        },
        interval=settings.args.checkpoint_interval,
        enabled=not secure_noise(settings),
        restart=f"pass {spelling('overwrite')} to start over",
    )
    if not checkpoint.enabled:
        print(
            f"{flag_name(DPConfig, 'noise_source')}: no checkpoint is written (it would hold "
            "the clients' private generator states); an interrupted run starts over",
            file=sys.stderr,
        )
    context = RunContext(data.clients, data.db.n_classes, settings.seed, checkpoint, execution)
    outcome = settings.method.run(context, settings.configs)
    if outcome.privacy is not None:
        patients = training_patients(data.clients)
        outcome = replace(outcome, privacy=with_patients(outcome.privacy, patients))
    evaluation = evaluate_clients(
        clients=data.clients,
        local=outcome.local,
        global_=outcome.global_,
        grid_resolution=settings.args.weights_grid_resolution,
        metric=settings.args.lambda_metric,
        downstream=settings.args.downstream,
        joint=outcome.joint,
        pooled_y=pooled_test(data.clients)[1],
    )
    wall = checkpoint.elapsed()
    generative = settings.configs.generative
    if settings.args.save_synthetic and outcome.synthetic and generative is not None:
        save_synthetic(files.run_dir, data, generative, outcome.synthetic)
    close_run(
        run=files,
        seed=settings.seed,
        split_args=facts.split_args,
        evaluation=evaluation,
        outcome=outcome,
        wall=wall,
    )
    checkpoint.remove()
    return files.run_dir


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


def secure_noise(settings: Settings) -> bool:
    """Whether the run draws its private randomness from secret keys (--secure_noise): such a
    run is never checkpointed (utils.checkpoint.RoundCheckpoint, `enabled`)."""
    dp = settings.configs.dp
    return bool(settings.args.secure_noise) or (dp is not None and dp.noise_source == "secure")


def load_run_data(settings: Settings) -> RunData:
    """The database and the split (made and saved if missing; its warnings printed), and the
    clients' data; warns when delta is not below 1/n for a client."""
    db = load_database(settings.args.database_root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split, split_path = load_or_make_split(db, settings.configs.split, settings.args.split_file)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    clients = client_datasets(db, split)
    dp = settings.configs.dp
    try:  # --privacy_unit patient where it cannot be: one line before any output
        if dp is not None and settings.method.client is not None:
            has_ids = db.patients() is not None
            privacy_unit(dp, settings.method.client, has_ids, settings.execution.vectorized)
    except ValueError as err:
        raise UsageError(str(err)) from None
    warn_privacy_settings(settings.configs, clients)
    return RunData(db, split, Path(split_path), clients)


def warn_privacy_settings(configs: Configs, clients: list[ClientData]) -> None:
    """Print the privacy module's warning about delta and the clients' sizes, if any."""
    message = delta_warning(configs.dp, [c.n_train for c in clients], [c.id for c in clients])
    if message:
        print(f"warning: {message}", file=sys.stderr)


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


def save_synthetic(
    run_dir: Path,
    data: RunData,
    cfg: GenerativeConfig,
    synthetic: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """synthetic.npz, for the real-vs-synthetic plot: every client's synthetic embeddings (model
    space), labels and client id, and the real training embeddings (model space) and labels of
    the largest client, with the class names."""
    clients = data.clients
    largest = max(clients, key=lambda c: c.n_train)
    save_npz(
        run_dir / SYNTHETIC_FILE,
        embeddings=np.concatenate([s for s, _ in synthetic]).astype(np.float32),
        labels=np.concatenate([y for _, y in synthetic]).astype(np.int64),
        client=np.concatenate([np.full(len(y), c.id) for c, (_, y) in zip(clients, synthetic)]),
        real_embeddings=squash(largest.x_train, cfg.squash_temperature).astype(np.float32),
        real_labels=largest.y_train.astype(np.int64),
        real_client=np.asarray(largest.id, dtype=np.int64),
        class_names=np.asarray(data.db.classes, dtype=str),
    )
