"""Run one experiment on an embedding database and write its results files.

    python main.py --database_root data/digits/database --method fedavg --seed 3407

Creates (or reuses) the client split, runs the method, and writes config.json, history.csv and
metrics.json into the run directory (default: derived from the configuration). While a federated
method runs, checkpoint/ there holds its state after the last finished round: `--resume` continues
an interrupted run to the same results; the checkpoint is removed when the run finishes.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from algorithms.baselines import run_centralized, run_fedavg, run_local
from algorithms.evaluation import Outcome, evaluate_clients
from algorithms.fedavg import FedAvgConfig
from algorithms.generative import (
    GENERATIVE_METHODS,
    SYNTHETIC_LABELS,
    GenerativeConfig,
    run_generative,
)
from algorithms.heads import HeadConfig
from algorithms.privacy import ACCOUNTANTS, CALIBRATIONS, DPConfig
from data.clients import client_datasets
from data.database import DatabaseError, load_database
from data.partition import (
    SplitError,
    add_split_arguments,
    load_or_make_split,
    split_config_from_args,
)
from utils.checkpoint import CheckpointError, RoundCheckpoint
from utils.cli import OutputError, Parser, check_output
from utils.io import read_json, save_npz, sha256_file
from utils.metrics import summarize_clients
from utils.progress import set_quiet
from utils.results import (
    CONFIG_FILE,
    ResultsError,
    config_key,
    default_run_dir,
    is_finished,
    prepare_run_dir,
    write_config,
    write_history,
    write_metrics,
)

METHODS = ("local", "centralized", "fedavg", "fedprox", "fedlambda", "dpcvae", "dpcgan")
ALGORITHM_ALIASES = {"normal": "fedavg", "fedprox": "fedprox"}
ANONYMIZER_ALIASES = {"cvae_fedavg": "dpcvae", "cgan_fedavg": "dpcgan"}
AGGREGATOR_ALIASES = {"local": "local"}
# The folder of a run directory that holds the checkpoint of an unfinished federated run.
CHECKPOINT_DIR = "checkpoint"


class UsageError(ValueError):
    """Bad flags: the message names the flag."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("experiment")
    g.add_argument(
        "--database_root", required=True, help="embedding database folder made by data/create_db.py"
    )
    g.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="local: a head per client on its own data; centralized: one head on the "
        "pooled data (not private, an upper bound); fedavg / fedprox: a head "
        "trained federatedly; fedlambda: the FedAvg head mixed with a local head; "
        "dpcvae / dpcgan: a DP generative model trained federatedly, whose synthetic data "
        "trains a head that is mixed with a local head",
    )
    g.add_argument(
        "--algorithm",
        choices=sorted(ALGORITHM_ALIASES),
        default=None,
        help="the paper's spelling: normal = --method fedavg, fedprox = --method fedprox",
    )
    g.add_argument(
        "--anonymizer",
        choices=sorted(ANONYMIZER_ALIASES),
        default=None,
        help="the paper's spelling: cvae_fedavg = --method dpcvae, cgan_fedavg = --method dpcgan",
    )
    g.add_argument(
        "--aggregator_type",
        choices=["local", "centralized"],
        default=None,
        help="the paper's spelling: local = --method local (centralized means the "
        "FedAvg server there, so it selects nothing by itself)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=3407,
        help="run seed: model initialization, batch order, client sampling. "
        "The paper uses 3407, 12345 and 202502. Default: 3407",
    )
    g.add_argument(
        "--split_seed",
        type=int,
        default=202502,
        help="seed of the client split, kept apart from the run seed. Default: 202502",
    )
    g.add_argument(
        "--split_file",
        default=None,
        help="use this split file (from data/partition.py) instead of the one "
        "named by the partition flags under <database_root>/splits/",
    )
    g.add_argument(
        "--results_dir",
        default=None,
        help="run directory. Default: <results_root>/<dataset>/<backbone>/"
        "<method>-<config hash>/seed_<seed>",
    )
    g.add_argument(
        "--results_root",
        default="results",
        help="root of the default run directories. Default: results",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in the run directory (refused otherwise)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last finished round (same flags required): "
        "fedavg, fedprox, fedlambda, dpcvae and dpcgan write a checkpoint into the run "
        "directory after every round (removed when the run finishes); the results equal an "
        "uninterrupted run's. On a finished run it does nothing",
    )
    g.add_argument(
        "--checkpoint_interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="write the checkpoint after a round only when at least this many seconds have "
        "passed since the last one (0: after every round). A resumed run replays the rounds "
        "since the last checkpoint and still ends with the same results; a positive value "
        "saves the writing time of runs whose rounds take a second or two (the demo uses 60)",
    )
    g.add_argument(
        "--save_synthetic",
        action="store_true",
        help="dpcvae / dpcgan: also write every client's synthetic embeddings (model space) "
        "and labels to synthetic.npz in the run directory (for plots)",
    )
    g.add_argument(
        "--skip_existing",
        action="store_true",
        help="if the run directory already holds a finished run, report it and exit 0 "
        "(for scripts that loop over seeds and are rerun)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch CPU threads (torch.set_num_threads); 0 keeps torch's default of one per "
        "core. dpcvae / dpcgan spend them on clients: that many train at once, one thread "
        "each (same results). Elsewhere more than one helps only on an otherwise idle machine: "
        "when other processes share the cores, threads wait on each other and training slows "
        "down 10-20x. Default: 1",
    )

    add_split_arguments(parser)

    h = parser.add_argument_group(
        "classification heads (local, centralized, FedLambda's local head)"
    )
    d = HeadConfig()
    h.add_argument(
        "--local_epochs",
        type=int,
        default=d.epochs,
        help=f"full-batch epochs of a linear head. Default: {d.epochs}",
    )
    h.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help=f"learning rate of the heads (and of the generative models). Default: {d.lr}",
    )
    h.add_argument(
        "--weight_decay",
        type=float,
        default=d.weight_decay,
        help=f"weight decay of the heads. Default: {d.weight_decay}",
    )
    h.add_argument(
        "--classifier_optimizer",
        choices=["adam", "sgd"],
        default=d.optimizer,
        help=f"optimizer of the heads. Default: {d.optimizer}",
    )
    h.add_argument(
        "--weights_grid_resolution",
        type=float,
        default=0.1,
        help="step of the lambda grid {0, step, ..., 1} of the mixing protocol. Default: 0.1",
    )

    f = parser.add_argument_group("federated head (fedavg, fedprox, fedlambda)")
    d = FedAvgConfig()
    f.add_argument(
        "--n_rounds",
        type=int,
        default=d.n_rounds,
        help=f"communication rounds. Default: {d.n_rounds}",
    )
    f.add_argument(
        "--local_steps",
        type=int,
        default=d.local_steps,
        help=f"local epochs per round. Default: {d.local_steps}",
    )
    f.add_argument(
        "--bz",
        type=int,
        default=d.batch_size,
        help=f"local minibatch size. Default: {d.batch_size}",
    )
    f.add_argument(
        "--fedavg_lr", type=float, default=d.lr, help=f"client learning rate. Default: {d.lr}"
    )
    f.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default=d.optimizer,
        help=f"client optimizer. Default: {d.optimizer}",
    )
    f.add_argument(
        "--lr_scheduler",
        choices=["multi_step", "none"],
        default=d.lr_scheduler,
        help="multi_step: x0.1 at 50%% and 75%% of the rounds. Default: multi_step",
    )
    f.add_argument(
        "--mu",
        type=float,
        default=0.05,
        help="FedProx proximal weight, term mu/2 * ||w - w_global||^2 "
        "(used by --method fedprox only). Default: 0.05",
    )
    f.add_argument(
        "--sampling_rate",
        type=float,
        default=d.sampling_rate,
        help=f"fraction of clients taking part in each round. Default: {d.sampling_rate}",
    )
    add_generative_arguments(parser)
    return parser


def add_generative_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the DP generative methods (names as in the paper's scripts)."""
    gen = parser.add_argument_group("DP generative models (dpcvae, dpcgan)")
    d = GenerativeConfig()
    add = gen.add_argument
    add(
        "--n_fedavg_rounds",
        type=int,
        default=d.n_rounds,
        help=f"communication rounds of the generative model. Default: {d.n_rounds}",
    )
    add(
        "--local_epochs_gen",
        type=int,
        default=d.local_epochs,
        help=f"local epochs per round. Default: {d.local_epochs}",
    )
    add(
        "--gen_batch_size",
        type=int,
        default=d.batch_size,
        help="nominal batch size B; under DP, batches are Poisson sampled at rate "
        f"1/ceil(n/B). Default: {d.batch_size}",
    )
    add(
        "--gan_lr",
        type=float,
        default=d.gan_lr,
        help="Adam learning rate of the CGAN (betas 0.5, 0.999); the CVAE uses --lr. "
        f"Default: {d.gan_lr}",
    )
    add(
        "--cvae_beta",
        type=float,
        default=d.beta,
        help=f"weight of the KL term of the CVAE loss. Default: {d.beta}",
    )
    add(
        "--cvae_var",
        type=float,
        default=d.latent_var,
        help="scale of the latent draw when sampling, z = var * N(0, I), as in the paper's "
        f"code. Default: {d.latent_var}",
    )
    add(
        "--hidden_dim",
        type=int,
        default=d.hidden_dim,
        help=f"hidden width of the CVAE. Default: {d.hidden_dim}",
    )
    add(
        "--latent_dim",
        type=int,
        default=d.latent_dim,
        help=f"latent size of the CVAE and CGAN. Default: {d.latent_dim}",
    )
    add(
        "--generated_factor",
        type=float,
        default=d.generated_factor,
        help=f"synthetic samples per real training sample. Default: {d.generated_factor}",
    )
    add(
        "--synthetic_labels",
        choices=SYNTHETIC_LABELS,
        default=d.synthetic_labels,
        help="match: per class as many samples as the client holds (the paper); uniform: the "
        "same total spread evenly over all classes. Default: match",
    )
    add(
        "--squash_temperature",
        type=float,
        default=d.squash_temperature,
        help="t of the fixed squash sigmoid(u / t) that maps per-record standardized "
        f"embeddings into (0, 1) for the sigmoid decoders. Default: {d.squash_temperature}",
    )

    p = parser.add_argument_group("differential privacy (dpcvae, dpcgan)")
    d = DPConfig()
    switch = p.add_mutually_exclusive_group()
    switch.add_argument(
        "--enable_dp",
        dest="enable_dp",
        action="store_true",
        default=True,
        help="train with DP-SGD (the default)",
    )
    switch.add_argument(
        "--disable_dp",
        dest="enable_dp",
        action="store_false",
        help="train without DP (an ablation: nothing is private)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=d.epsilon,
        help=f"target epsilon of each client over the whole training. Default: {d.epsilon}",
    )
    p.add_argument(
        "--delta",
        type=float,
        default=d.delta,
        help=f"target delta; should be below 1/n for every client. Default: {d.delta}",
    )
    p.add_argument(
        "--max_grad_norm",
        type=float,
        default=d.max_grad_norm,
        help=f"per-sample gradient clipping norm. Default: {d.max_grad_norm}",
    )
    p.add_argument(
        "--accountant",
        choices=ACCOUNTANTS,
        default=d.accountant,
        help="prv (default: a numerically tight upper bound, so less noise for the "
        "same guarantee) or rdp (analytic, looser)",
    )
    p.add_argument(
        "--dp_calibration",
        choices=CALIBRATIONS,
        default=d.calibration,
        help="total (default): noise calibrated for every DP step of the run, so the "
        "spent epsilon meets the target; paper: as the paper's code, noise for 20 "
        "epochs while training all rounds (the reported spent epsilon exceeds the target)",
    )


def resolve_method(args: argparse.Namespace) -> str:
    """--method, or the paper's --algorithm / --aggregator_type spellings (which must agree)."""
    candidates = []
    if args.method:
        candidates.append(("--method", args.method))
    if args.algorithm:
        candidates.append(("--algorithm", ALGORITHM_ALIASES[args.algorithm]))
    if args.anonymizer:
        candidates.append(("--anonymizer", ANONYMIZER_ALIASES[args.anonymizer]))
    if args.aggregator_type in AGGREGATOR_ALIASES:
        candidates.append(("--aggregator_type", AGGREGATOR_ALIASES[args.aggregator_type]))
    if not candidates:
        raise UsageError(f"--method is required (one of {', '.join(METHODS)})")
    names = {m for _, m in candidates}
    if len(names) > 1:
        given = ", ".join(f"{flag} -> {m}" for flag, m in candidates)
        raise UsageError(f"conflicting method flags: {given}")
    return names.pop()


def build_configs(args: argparse.Namespace, method: str) -> dict:
    """Validated config dataclasses for the method (each raises ValueError naming its flag)."""
    configs: dict = {"split": split_config_from_args(args, args.split_seed)}
    if method in ("local", "centralized", "fedlambda", *GENERATIVE_METHODS):
        configs["head"] = HeadConfig(
            args.local_epochs, args.lr, args.weight_decay, args.classifier_optimizer
        )
    if method in ("fedavg", "fedprox", "fedlambda"):
        configs["fedavg"] = FedAvgConfig(
            n_rounds=args.n_rounds,
            local_steps=args.local_steps,
            batch_size=args.bz,
            lr=args.fedavg_lr,
            optimizer=args.optimizer,
            lr_scheduler=args.lr_scheduler,
            mu=args.mu if method == "fedprox" else 0.0,
            sampling_rate=args.sampling_rate,
        )
    if method in GENERATIVE_METHODS:
        configs["generative"] = GenerativeConfig(
            n_rounds=args.n_fedavg_rounds,
            local_epochs=args.local_epochs_gen,
            batch_size=args.gen_batch_size,
            lr=args.lr,
            gan_lr=args.gan_lr,
            beta=args.cvae_beta,
            latent_var=args.cvae_var,
            hidden_dim=args.hidden_dim,
            latent_dim=args.latent_dim,
            generated_factor=args.generated_factor,
            synthetic_labels=args.synthetic_labels,
            squash_temperature=args.squash_temperature,
        )
        configs["dp"] = DPConfig(
            enabled=args.enable_dp,
            epsilon=args.epsilon,
            delta=args.delta,
            max_grad_norm=args.max_grad_norm,
            accountant=args.accountant,
            calibration=args.dp_calibration,
        )
    return configs


def run_method(
    method: str,
    clients: list,
    n_classes: int,
    configs: dict,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
) -> Outcome:
    """Run one method; the federated ones continue from and write to `checkpoint`."""
    if method == "local":
        return run_local(clients, n_classes, configs["head"], seed)
    if method == "centralized":
        return run_centralized(clients, n_classes, configs["head"], seed)
    if method in ("fedavg", "fedprox"):
        return run_fedavg(clients, n_classes, configs["fedavg"], seed, checkpoint=checkpoint)
    if method == "fedlambda":
        return run_fedavg(
            clients, n_classes, configs["fedavg"], seed, configs["head"], checkpoint=checkpoint
        )
    if method in GENERATIVE_METHODS:
        return run_generative(
            method,
            clients,
            n_classes,
            configs["generative"],
            configs["dp"],
            configs["head"],
            seed,
            checkpoint,
        )
    raise UsageError(f"--method {method!r} is not known")


def check_privacy_settings(configs: dict, clients: list) -> None:
    """Warn when delta is not below 1/n for a client (the usual requirement of DP)."""
    dp = configs.get("dp")
    if dp is None or not dp.enabled:
        return
    small = [c.id for c in clients if dp.delta >= 1.0 / max(c.n_train, 1)]
    if small:
        print(
            f"warning: --delta {dp.delta} is not below 1/n for clients {small} "
            f"(n = their training size); the guarantee is weak for them",
            file=sys.stderr,
        )


def warn_if_over_budget(privacy: dict | None) -> None:
    """Say so loudly when the spent epsilon exceeds the target (only --dp_calibration paper)."""
    if not privacy or not privacy.get("enabled"):
        return
    spent, target = privacy["epsilon_max"], privacy["target_epsilon"]
    if spent > target + 1e-9:
        print(
            f"warning: the spent epsilon ({spent:.3f}, largest over clients, from the "
            f"accountant) exceeds the target {target} (--dp_calibration "
            f"{privacy['calibration']}); this run is NOT {target}-DP",
            file=sys.stderr,
        )


def save_synthetic(run_dir: Path, clients: list, synthetic: list) -> None:
    """synthetic.npz: embeddings (model space), labels and the client id of every row."""
    save_npz(
        run_dir / "synthetic.npz",
        embeddings=np.concatenate([s for s, _ in synthetic]).astype(np.float32),
        labels=np.concatenate([y for _, y in synthetic]).astype(np.int64),
        client=np.concatenate([np.full(len(y), c.id) for c, (_, y) in zip(clients, synthetic)]),
    )


def versions() -> dict:
    import numpy
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def run(args: argparse.Namespace) -> Path:
    """Set everything up (all input checks happen before any output), run, write results."""
    method = resolve_method(args)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    for flag in ("seed", "split_seed"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    try:
        configs = build_configs(args, method)
    except ValueError as err:
        raise UsageError(str(err)) from None
    lambda_grid_resolution = args.weights_grid_resolution
    if not 0 < lambda_grid_resolution <= 1:
        raise UsageError(
            f"--weights_grid_resolution must lie in (0, 1], got {lambda_grid_resolution}"
        )
    db = load_database(args.database_root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split, split_path = load_or_make_split(db, configs["split"], args.split_file)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    clients = client_datasets(db, split)
    check_privacy_settings(configs, clients)

    files = open_run(args, method, configs, db.meta, split, split_path, sys.argv[1:])
    if files.finished:
        return files.run_dir

    checkpoint = RoundCheckpoint(
        files.run_dir / CHECKPOINT_DIR,
        {"config_key": files.key, "seed": args.seed},
        interval=args.checkpoint_interval,
    )
    outcome = run_method(method, clients, db.n_classes, configs, args.seed, checkpoint)
    rows, lam, scores = evaluate_clients(
        clients, outcome.local, outcome.global_, lambda_grid_resolution
    )
    wall = checkpoint.elapsed()
    if args.save_synthetic and outcome.synthetic:
        save_synthetic(files.run_dir, clients, outcome.synthetic)
    close_run(files, args.seed, split, rows, lam, scores, outcome, wall)
    checkpoint.remove()
    return files.run_dir


@dataclass(frozen=True)
class RunFiles:
    """Where a run writes and what names it. `finished`: --skip_existing found a finished run
    there, and nothing was written."""

    run_dir: Path
    method: str
    key: str
    dataset: str
    backbone: str
    finished: bool = False


def describe_run(
    args: argparse.Namespace, method: str, configs: dict, meta: dict, split: dict
) -> tuple[dict, Path]:
    """The run's configuration (whose hash names its directory) and its directory. Needs the
    database's meta.json and the split file only, not the embeddings."""
    dataset = str(meta.get("dataset", Path(args.database_root).name))
    backbone = str(meta.get("backbone", "unknown"))
    config = {
        "method": method,
        "database_root": str(Path(args.database_root).resolve()),
        # what identifies the data in the config hash: not its path, but its content
        "database": {
            "dataset": dataset,
            "backbone": backbone,
            "fingerprint": split["database"]["fingerprint"],
        },
        **{name: asdict(cfg) for name, cfg in configs.items()},
        "weights_grid_resolution": args.weights_grid_resolution,
    }
    run_dir = (
        Path(args.results_dir)
        if args.results_dir
        else default_run_dir(args.results_root, dataset, backbone, method, config, args.seed)
    )
    return config, run_dir


def open_run(
    args: argparse.Namespace,
    method: str,
    configs: dict,
    meta: dict,
    split: dict,
    split_path: Path,
    argv: list[str],
) -> RunFiles:
    """Create the run directory and write config.json (the Flower ServerApp calls it too).

    A finished run there is refused (kept with --skip_existing or --resume, replaced with
    --overwrite); so is an interrupted one, unless --resume continues it (its config.json must
    name the same configuration and seed) or --overwrite starts over."""
    config, run_dir = describe_run(args, method, configs, meta, split)
    dataset, backbone = config["database"]["dataset"], config["database"]["backbone"]
    key = config_key(config)
    resume = getattr(args, "resume", False)
    check_output(run_dir, "--results_dir" if args.results_dir else "--results_root", folder=True)
    if resume and (run_dir / CONFIG_FILE).is_file():
        check_same_run(run_dir, key, args.seed)
    if (args.skip_existing or resume) and is_finished(run_dir):
        print(f"skipping: {run_dir} holds a finished run", file=sys.stderr)
        return RunFiles(run_dir, method, key, dataset, backbone, finished=True)
    checkpoint = run_dir / CHECKPOINT_DIR
    if checkpoint.exists() and not (resume or args.overwrite):
        raise ResultsError(
            f"{run_dir}: holds an interrupted run ({checkpoint}); pass --resume to continue it "
            "or --overwrite to start over"
        )
    if args.overwrite:
        shutil.rmtree(checkpoint, ignore_errors=True)
    run_dir = prepare_run_dir(run_dir, args.overwrite)
    if resume and (run_dir / CONFIG_FILE).is_file():
        return RunFiles(run_dir, method, key, dataset, backbone)
    write_config(
        run_dir,
        {
            **config,
            "config_key": key,
            "seed": args.seed,
            "split_file": str(split_path),
            "split_sha256": sha256_file(split_path),
            "argv": argv,
            "versions": versions(),
        },
    )
    return RunFiles(run_dir, method, key, dataset, backbone)


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
            f"{(key, seed)}); --resume needs the flags of the interrupted run"
        )


def close_run(
    run: RunFiles,
    seed: int,
    split: dict,
    rows: list[dict],
    lam: float | None,
    scores: list[float] | None,
    outcome: Outcome,
    wall: float,
) -> None:
    """history.csv, then metrics.json (the last file: its presence marks a finished run)."""
    metrics = {
        "method": run.method,
        "dataset": run.dataset,
        "backbone": run.backbone,
        "seed": seed,
        "config_key": run.key,
        "split": split["args"],
        "clients": rows,
        "summary": summarize_clients(rows),
        "lambda": lam,
        "lambda_val_acc": scores,
        "privacy": outcome.privacy,
        "fidelity": outcome.fidelity,
        "cost": {
            "wall_seconds": wall,
            "params_shared": outcome.params_shared,
            "bytes_per_round": 4 * outcome.params_shared,
            "params_model": outcome.params_model,
        },
    }
    warn_if_over_budget(outcome.privacy)
    write_history(run.run_dir, outcome.history)
    write_metrics(run.run_dir, metrics)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    if args.num_threads < 0:
        parser.error("--num_threads must be >= 0")
    if not args.checkpoint_interval >= 0:
        parser.error(f"--checkpoint_interval must be >= 0, got {args.checkpoint_interval}")
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    try:
        run_dir = run(args)
    except (
        UsageError,
        DatabaseError,
        SplitError,
        ResultsError,
        CheckpointError,
        OutputError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics_summary(run_dir)
    return 0


def metrics_summary(run_dir: Path) -> None:
    """Print the run's headline numbers and where its files are."""
    from utils.results import read_metrics

    m = read_metrics(run_dir)
    s = m["summary"]
    lam = "" if m["lambda"] is None else f"  lambda {m['lambda']:.1f}"
    print(
        f"{m['method']}: test acc {s['test_acc_mean']:.4f} +- {s['test_acc_std']:.4f} "
        f"(balanced {s['test_balanced_acc_mean']:.4f}, F1 macro {s['test_f1_macro_mean']:.4f})"
        f"{lam}  [{m['cost']['wall_seconds']:.1f} s]"
    )
    print(f"results: {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
