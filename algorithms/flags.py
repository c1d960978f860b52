"""main.py's flags: one parser for main.py, the Flower apps (`main-args`) and fl/run_local.py.

Every flag belongs to a section, its --help group: `None` (the experiment and the partition:
every method), or a config section that the registry lists for the methods that read it. A flag
given explicitly whose section the method does not read is refused (algorithms/options.py).

The flags of the config dataclasses (CONFIGS) are written once, in the metadata of their fields
(utils.cli.flag); this module adds them to the parser, and builds the configs back from the
parsed flags (`build_config`). The flags here are those of no config: the experiment's, the
lambda protocol's, and how the generative methods compute.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any

from algorithms import presets
from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import LAMBDA_METRICS, lambda_grid
from algorithms.methods import registry
from algorithms.methods.fedavg import FedAvgConfig
from algorithms.methods.pft_config import PFTConfig
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.split_config import add_split_arguments
from utils.cli import Parser, add_flags, config_from_args, flag_name, flagged_fields
from utils.device import DEVICES

# The sections of flags, with the title of their --help group (groups in this order).
SECTIONS = {
    "head": "classification heads",
    "lambda": "lambda protocol: lam * p_local + (1 - lam) * p_global",
    "fedavg": "federated head",
    "fedprox": "FedProx",
    "generative": "DP generative models",
    "synthesis": "synthetic data",
    "cvae": "CVAE",
    "cgan": "CGAN",
    "pft": "class-conditional Gaussians",
    "fedpft": "FedPFT mixtures",
    "dp": "differential privacy",
    "dpsgd": "DP-SGD",
}

# The config dataclasses, in their order in config.json. A method gets a config when it reads
# any section of the config's flags.
CONFIGS = {
    "head": HeadConfig,
    "fedavg": FedAvgConfig,
    "generative": GenerativeConfig,
    "pft": PFTConfig,
    "dp": DPConfig,
}

# What --downstream can name (the run's headline rows).
DOWNSTREAM_MODES = ("mix", "prior", "joint")


class UsageError(ValueError):
    """Bad flags: the message names the flag."""


def config_sections(cls: type) -> frozenset[str]:
    """The sections of `cls`'s own flags (a flag of no section belongs to every method)."""
    return frozenset(r.section for _, r in flagged_fields(cls) if not r.shared and r.section)


def build_config(name: str, args: argparse.Namespace, method: registry.Method) -> object:
    """The config `name` of `method` from parsed flags (ValueError naming a flag)."""
    return config_from_args(CONFIGS[name], args, method.sections)


def preset_note(dest: str) -> str:
    """' (--preset dp: value)' for the --help of a flag that a preset sets, else ''."""
    setting = [(p, presets.flags(p)) for p in presets.names()]
    preset = flag_name(GenerativeConfig, "preset")
    notes = [f"{preset} {p}: {values[dest]}" for p, values in setting if dest in values]
    return f" ({'; '.join(notes)})" if notes else ""


class FlagParser(Parser):
    """The parser of main.py's flags; it remembers the section of every flag it adds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.section_of: dict[str, str] = {}  # dest -> section (absent: every method)
        self.names_of: dict[str, list[str]] = {}  # dest -> its spellings, as --help shows them
        self.groups: dict[str, argparse._ArgumentGroup] = {}

    def group(self, section: str | None) -> argparse._ArgumentGroup:
        """The --help group of `section`, titled with the methods that read it."""
        if section is None:
            raise ValueError("a flag of main.py's configs belongs to a section")
        if section not in self.groups:
            methods = ", ".join(registry.using(section))
            self.groups[section] = self.add_argument_group(f"{SECTIONS[section]} ({methods})")
        return self.groups[section]

    def remember(self, section: str | None, action: argparse.Action) -> None:
        self.names_of.setdefault(action.dest, []).extend(action.option_strings)
        if section is not None:
            self.section_of[action.dest] = section

    def add(self, group, section: str | None, *names: str, **kwargs) -> argparse.Action:
        """`group.add_argument(*names, **kwargs)`, remembering the flag's section."""
        action = group.add_argument(*names, **kwargs)
        self.remember(section, action)
        return action

    def add_config(self, cls: type) -> None:
        """The flags of a config dataclass's fields, each in its section's group."""
        sections = {r.dest: r.section for _, r in flagged_fields(cls) if not r.shared}
        for action in add_flags(cls, self.group, preset_note):
            self.remember(sections[action.dest], action)

    def spelling(self, dest: str) -> str:
        """The flag of `dest`, for messages: `--method`."""
        return self.names_of[dest][0]


def _method_help() -> str:
    return "; ".join(f"{m.name}: {m.help}" for m in registry.METHODS)


def _alias_help(flag: str) -> str:
    pairs = ", ".join(f"{v} = --method {m}" for v, m in sorted(registry.aliases(flag).items()))
    return f"the paper's spelling: {pairs}. Default: none"


def build_parser(description: str | None = None, prog: str | None = None) -> FlagParser:
    """main.py's parser (`description`: its --help text)."""
    parser = FlagParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _experiment_flags(parser)
    for action in add_split_arguments(parser):
        parser.remember(None, action)
    for section in SECTIONS:
        parser.group(section)
    for cls in CONFIGS.values():
        parser.add_config(cls)
    _lambda_flags(parser)
    _generative_flags(parser)
    return parser


@functools.cache
def _parser() -> FlagParser:
    return build_parser()


def spelling(dest: str) -> str:
    """The flag of main.py's `dest`, for messages and command lines built elsewhere: the
    spelling is written once, where the flag is defined."""
    return _parser().spelling(dest)


def _experiment_flags(parser: FlagParser) -> None:
    g = parser.add_argument_group("experiment (every method)")

    def add(*names: str, **kwargs) -> None:
        parser.add(g, None, *names, **kwargs)

    add(
        "--database_root",
        required=True,
        help="embedding database folder made by data/create_db.py. Required",
    )
    add(
        "--method",
        choices=registry.NAMES,
        default=None,
        help=f"{_method_help()}. Required, unless a paper's spelling below names the method",
    )
    add("--algorithm", choices=sorted(registry.aliases("algorithm")), help=_alias_help("algorithm"))
    add(
        "--anonymizer",
        choices=sorted(registry.aliases("anonymizer")),
        help=_alias_help("anonymizer"),
    )
    add(
        "--aggregator_type",
        choices=[*sorted(registry.aliases("aggregator_type")), "centralized"],
        help="the paper's spelling: local = --method local; centralized names the paper's "
        "FedAvg server, not a method, and is refused: choose the method with --method. "
        "Default: none",
    )
    add(
        "--seed",
        type=int,
        default=3407,
        help="run seed: model initialization, batch order, client sampling, and (unless "
        f"{flag_name(DPConfig, 'noise_source')}) the DP noise. The paper uses 3407, 12345 and "
        "202502. Default: 3407",
    )
    add(
        "--split_seed",
        type=int,
        default=202502,
        help="seed of the client split, kept apart from the run seed. Default: 202502",
    )
    add(
        "--split_file",
        default=None,
        help="use this split file (from data/partition.py) instead of the one named by the "
        "partition flags under <database_root>/splits/. Default: that one (made if missing)",
    )
    add(
        "--results_dir",
        default=None,
        help="run directory. Default: <results_root>/<dataset>/<backbone>/"
        "<method>-<config hash>/seed_<seed>",
    )
    add(
        "--results_root",
        default="results",
        help="root of the default run directories. Default: results",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace a finished run in the run directory (refused otherwise). Default: off",
    )
    add(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last finished round (same flags required): "
        "methods with rounds write a checkpoint into the run directory after every round "
        "(removed when the run finishes); the results equal an uninterrupted run's. On a "
        "finished run it does nothing; a method without rounds simply reruns. Default: off",
    )
    add(
        "--checkpoint_interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="write the checkpoint after a round only when at least this many seconds have "
        "passed since the last one (0: after every round). A resumed run replays the rounds "
        "since the last checkpoint and still ends with the same results; a positive value "
        "saves the writing time of runs whose rounds take a second or two (the demo uses 60). "
        "Default: 0",
    )
    add(
        "--skip_existing",
        action="store_true",
        help="if the run directory already holds a finished run, report it and exit 0 "
        "(for scripts that loop over seeds and are rerun). Default: off",
    )
    add("--quiet", action="store_true", help="no progress bars. Default: off")
    add(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where torch trains and predicts: the generative models and every head (auto: "
        "CUDA when available). Results are deterministic on one device and statistically the "
        "same across devices (not bit for bit). config.json records the device. A cuda "
        "request without CUDA is refused. Default: auto",
    )
    generative = " / ".join(registry.using("generative"))
    add(
        "--num_threads",
        type=int,
        default=1,
        help="torch CPU threads (torch.set_num_threads); 0 keeps torch's default of one per "
        f"core. {generative} spend them on clients: that many train at once, one thread "
        "each (same results). Elsewhere more than one helps only on an otherwise idle machine: "
        "when other processes share the cores, threads wait on each other and training slows "
        "down 10-20x. Default: 1",
    )


def _lambda_flags(parser: FlagParser) -> None:
    g = parser.group("lambda")

    def add(*names: str, **kwargs) -> None:
        parser.add(g, "lambda", *names, **kwargs)

    add(
        "--weights_grid_resolution",
        type=float,
        default=0.1,
        help="step of the grid {0, step, ..., 1} from which lam is chosen by the mean "
        "validation score across clients; it must divide 1. Default: 0.1",
    )
    add(
        "--lambda_metric",
        choices=tuple(LAMBDA_METRICS),
        default="accuracy",
        help="the validation score that chooses lam: accuracy (the paper's) or "
        "balanced_accuracy (weighs each client's rare classes, where sharing helps, as much as "
        "its frequent ones). metrics.json reports the protocol under both. Default: accuracy",
    )
    add(
        "--downstream",
        choices=DOWNSTREAM_MODES,
        default="mix",
        help="which downstream step the run's headline rows (clients, summary) report: mix = "
        "the paper's lambda mix of the local head and the global/synthetic head; prior = the "
        "global head corrected to the client's own label prior (from its own training counts, "
        "which never leave it), then the lambda mix; joint = one head on the client's real data "
        "plus the synthetic data, the synthetic part weighted by a value chosen on validation. "
        "Every run reports every mode (metrics.json `downstream_modes`). Default: mix",
    )


def _generative_flags(parser: FlagParser) -> None:
    """The generative methods' flags of no config: what they save and how they compute."""
    parser.add(
        parser.group("synthesis"),
        "synthesis",
        "--save_synthetic",
        action="store_true",
        help="also write synthetic.npz into the run directory, for plots: every client's "
        "synthetic embeddings (model space) and labels, and the real training embeddings "
        "(model space) and labels of the largest client. Default: off",
    )
    parser.add(
        parser.group("generative"),
        "generative",
        "--vectorized",
        choices=("auto", "on", "off"),
        default="auto",
        help="on: every simulated client trains at once, as one stacked model (batched "
        "products, padded Poisson batches with masks, each client's own noise, Adam and "
        "accountant; the per-client results up to float rounding, ~1e-6 relative); off: one "
        "client after another (the bit-exact reference; --num_threads of them at once on "
        "CPU). auto: on with CUDA, off on CPU (faster there, see docs/performance.md). Not "
        "under Flower, where each site is one client. Default: auto",
    )


# --- the checks of the flags of no config ----------------------------------------------------


def resolve_method(parser: FlagParser, args: argparse.Namespace) -> registry.Method:
    """--method, or the paper's --algorithm / --anonymizer / --aggregator_type (which must
    agree with each other)."""
    if args.aggregator_type == "centralized":
        raise UsageError(
            f"{parser.spelling('aggregator_type')} centralized names the paper's FedAvg server, "
            f"not a method: choose one with {parser.spelling('method')} "
            f"({', '.join(registry.NAMES)}); one head on the pooled data is "
            f"{parser.spelling('method')} centralized"
        )
    candidates = []
    if args.method:
        candidates.append((parser.spelling("method"), args.method))
    for dest in ("algorithm", "anonymizer", "aggregator_type"):
        value = getattr(args, dest)
        if value is not None:
            candidates.append((parser.spelling(dest), registry.aliases(dest)[value]))
    if not candidates:
        raise UsageError(
            f"{parser.spelling('method')} is required (one of {', '.join(registry.NAMES)})"
        )
    names = {m for _, m in candidates}
    if len(names) > 1:
        given = ", ".join(f"{flag} -> {m}" for flag, m in candidates)
        raise UsageError(f"conflicting method flags: {given}")
    return registry.get(names.pop())


def check_run_flags(parser: FlagParser, args: argparse.Namespace) -> None:
    """The flags of the experiment itself that no config dataclass checks."""
    name = parser.spelling
    if args.resume and args.overwrite:
        raise UsageError(f"{name('resume')} and {name('overwrite')} exclude each other")
    if args.resume and args.secure_noise:
        raise UsageError(
            f"{name('resume')} does not apply to {name('secure_noise')} runs: their clients' "
            "secret keys are not kept, so a resumed run could not continue their noise streams"
        )
    for dest in ("seed", "split_seed", "num_threads"):
        if getattr(args, dest) < 0:
            raise UsageError(f"{name(dest)} must be >= 0, got {getattr(args, dest)}")
    if not (args.checkpoint_interval >= 0 and math.isfinite(args.checkpoint_interval)):
        raise UsageError(
            f"{name('checkpoint_interval')} must be >= 0, got {args.checkpoint_interval}"
        )
    try:
        lambda_grid(args.weights_grid_resolution)
    except ValueError as err:
        raise UsageError(f"{name('weights_grid_resolution')}: {err}") from None
