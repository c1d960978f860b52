"""One run's lifecycle, for main.py and the Flower apps: load the data, open the run directory
and write config.json, run the method through the registry, and close the run with history.csv
and metrics.json (written last: its presence marks a finished run).

A federated method writes its state after every round into checkpoint/ in the run directory;
`--resume` continues from it to the results an uninterrupted run gives, and the checkpoint is
removed when the run finishes. A --secure_noise run is never checkpointed: the checkpoint
would hold its private generator states (`secure_noise`). The run directory's own lifecycle
(config.json, refusals, metrics.json) is algorithms/run_files.py.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from algorithms.evaluation.downstream import evaluate_clients
from algorithms.flags import spelling
from algorithms.methods.registry import Configs, RunContext
from algorithms.options import Settings, UsageError, check_before_run
from algorithms.privacy.accounting import delta_warning, with_patients
from algorithms.privacy.config import DPConfig, privacy_unit
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.run_files import (
    CHECKPOINT_DIR,
    SYNTHETIC_FILE,
    DataFacts,
    RunFiles,
    close_run,
    data_facts,
    describe_run,
    discard_unfinished,
    open_run,
)
from data.clients import ClientData, client_datasets, pooled_test, training_patients
from data.database import Database, DatabaseError, load_database
from data.features import squash
from data.partition import load_or_make_split
from data.split_config import SplitError
from utils.checkpoint import CheckpointError, RoundCheckpoint
from utils.cli import OutputError, flag_name
from utils.io import save_npz
from utils.results import ResultsError

# What a run refuses with one line naming the flag or file (entry points exit with status 2).
RUN_ERRORS = (UsageError, DatabaseError, SplitError, ResultsError, CheckpointError, OutputError)


@dataclass(frozen=True)
class RunData:
    """The data of a run: the database, its split (and the file holding it), the clients."""

    db: Database
    split: dict
    split_path: Path
    clients: list[ClientData]


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
        enabled=not (secure_noise(settings) or secure_aggregation(settings)),
        restart=f"pass {spelling('overwrite')} to start over",
    )
    if secure_noise(settings):
        print(
            f"{flag_name(DPConfig, 'noise_source')}: no checkpoint is written (it would hold "
            "the clients' private generator states); an interrupted run starts over",
            file=sys.stderr,
        )
    elif not checkpoint.enabled:
        print(
            f"{flag_name(DPConfig, 'secure_aggregation')}: no checkpoint is written (the "
            "coordinator's optimizer state is not kept); an interrupted run starts over",
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


def secure_noise(settings: Settings) -> bool:
    """Whether the run draws its private randomness from secret keys (--secure_noise): such a
    run is never checkpointed (utils.checkpoint.RoundCheckpoint, `enabled`)."""
    dp = settings.configs.dp
    return bool(settings.args.secure_noise) or (dp is not None and dp.noise_source == "secure")


def secure_aggregation(settings: Settings) -> bool:
    """Whether the run sums noise shares under secure aggregation (not checkpointed)."""
    dp = settings.configs.dp
    return dp is not None and dp.enabled and dp.secure_aggregation


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
            privacy_unit(dp, settings.method.client, has_ids)
        if dp is not None and dp.secure_aggregation and dp.min_honest_sites > len(clients):
            raise ValueError(
                f"{flag_name(dp, 'min_honest_sites')} {dp.min_honest_sites}: the split has "
                f"{len(clients)} clients (every sum holds at most that many sites)"
            )
    except ValueError as err:
        raise UsageError(str(err)) from None
    warn_privacy_settings(settings.configs, clients)
    return RunData(db, split, Path(split_path), clients)


def warn_privacy_settings(configs: Configs, clients: list[ClientData]) -> None:
    """Print the privacy module's warning about delta and the clients' sizes, if any."""
    message = delta_warning(configs.dp, [c.n_train for c in clients], [c.id for c in clients])
    if message:
        print(f"warning: {message}", file=sys.stderr)


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
