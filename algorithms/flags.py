"""main.py's flags: one parser for main.py, the Flower apps (`main-args`) and fl/run_local.py.

Every flag belongs to a section, its --help group: `None` (the experiment and the partition:
every method), or a config section that the registry lists for the methods that read it. A flag
given explicitly whose section the method does not read is refused (algorithms/options.py).
"""

from __future__ import annotations

import argparse

from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import LAMBDA_METRICS
from algorithms.methods import registry
from algorithms.methods.fedavg import FedAvgConfig
from algorithms.methods.fedpft import COVARIANCES, PFTConfig
from algorithms.privacy.accounting import ACCOUNTANTS, CALIBRATIONS, COUNT_NOISE, DPConfig
from algorithms.privacy.dp_client import PRESETS, SYNTHETIC_LABELS, GenerativeConfig
from data.partition import add_split_arguments
from utils.cli import Parser
from utils.device import DEVICES

# The sections of flags, with the title of their --help group.
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


# --preset: the values a preset gives to flags not given explicitly (by dest). `dp` is our DP
# recipe for the CVAE at epsilon <= 1, measured in docs/dp_recipe.md.
PRESET_FLAGS: dict[str, dict[str, object]] = {
    "paper": {},
    "dp": {
        "cvae_loss": "elbo",
        "cvae_beta": 1.0,
        "cvae_layers": 0,
        "latent_dim": 4,
        "cvae_encoder_scale": 0.03,
        "gen_batch_size": 0,
        "n_fedavg_rounds": 40,
        "local_epochs_gen": 1,
        "cvae_lr": 0.1,
        "synthetic_labels": "balanced",
    },
}
assert tuple(PRESET_FLAGS) == PRESETS


def preset_note(dest: str) -> str:
    """' (--preset dp: value)' for the --help of a flag that a preset sets, else ''."""
    notes = [f"--preset {p}: {v[dest]}" for p, v in PRESET_FLAGS.items() if dest in v]
    return f" ({'; '.join(notes)})" if notes else ""


class FlagParser(Parser):
    """The parser of main.py's flags; it remembers the section of every flag it adds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.section_of: dict[str, str] = {}  # dest -> section (absent: every method)
        self.names_of: dict[str, list[str]] = {}  # dest -> its spellings, as --help shows them

    def group(self, section: str) -> argparse._ArgumentGroup:
        """The --help group of `section`, titled with the methods that read it."""
        methods = ", ".join(registry.using(section))
        return self.add_argument_group(f"{SECTIONS[section]} ({methods})")

    def add(self, group, section: str | None, *names: str, **kwargs) -> argparse.Action:
        """`group.add_argument(*names, **kwargs)`, remembering the flag's section."""
        action = group.add_argument(*names, **kwargs)
        self.names_of.setdefault(action.dest, []).extend(action.option_strings)
        if section is not None:
            self.section_of[action.dest] = section
        return action


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
    add_split_arguments(parser)
    _head_flags(parser)
    _fedavg_flags(parser)
    _generative_flags(parser)
    _cgan_flags(parser)
    _pft_flags(parser)
    _dp_flags(parser)
    return parser


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
        "--secure_noise) the DP noise. The paper uses 3407, 12345 and 202502. Default: 3407",
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


def _head_flags(parser: FlagParser) -> None:
    d = HeadConfig()
    g = parser.group("head")

    def add(*names: str, **kwargs) -> None:
        parser.add(g, "head", *names, **kwargs)

    add(
        "--local_epochs",
        type=int,
        default=d.epochs,
        help=f"full-batch epochs of a linear head. Default: {d.epochs}",
    )
    add(
        "--lr",
        type=float,
        default=d.lr,
        help=f"learning rate of the heads and of the CVAE (the CGAN has --gan_lr). Default: {d.lr}",
    )
    add(
        "--weight_decay",
        type=float,
        default=d.weight_decay,
        help=f"weight decay of the heads. Default: {d.weight_decay}",
    )
    add(
        "--classifier_optimizer",
        choices=["adam", "sgd"],
        default=d.optimizer,
        help=f"optimizer of the heads. Default: {d.optimizer}",
    )
    parser.add(
        parser.group("lambda"),
        "lambda",
        "--weights_grid_resolution",
        type=float,
        default=0.1,
        help="step of the grid {0, step, ..., 1} from which lam is chosen by the mean "
        "validation score across clients; it must divide 1. Default: 0.1",
    )
    parser.add(
        parser.group("lambda"),
        "lambda",
        "--lambda_metric",
        choices=tuple(LAMBDA_METRICS),
        default="accuracy",
        help="the validation score that chooses lam: accuracy (the paper's) or "
        "balanced_accuracy (weighs each client's rare classes, where sharing helps, as much as "
        "its frequent ones). metrics.json reports the protocol under both. Default: accuracy",
    )


def _fedavg_flags(parser: FlagParser) -> None:
    d = FedAvgConfig()
    g = parser.group("fedavg")

    def add(*names: str, **kwargs) -> None:
        parser.add(g, "fedavg", *names, **kwargs)

    add(
        "--n_rounds",
        type=int,
        default=d.n_rounds,
        help=f"communication rounds. Default: {d.n_rounds}",
    )
    add(
        "--fedavg_local_epochs",
        "--local_steps",
        dest="fedavg_local_epochs",
        type=int,
        default=d.local_steps,
        help="local epochs per round (--local_steps is the paper's name: it counts epochs, "
        f"not steps). Default: {d.local_steps}",
    )
    add(
        "--bz",
        type=int,
        default=d.batch_size,
        help=f"local minibatch size. Default: {d.batch_size}",
    )
    add("--fedavg_lr", type=float, default=d.lr, help=f"client learning rate. Default: {d.lr}")
    add(
        "--optimizer",
        choices=["sgd", "adam"],
        default=d.optimizer,
        help=f"client optimizer. Default: {d.optimizer}",
    )
    add(
        "--lr_scheduler",
        choices=["multi_step", "none"],
        default=d.lr_scheduler,
        help="multi_step: x0.1 at 50%% and 75%% of the rounds. Default: multi_step",
    )
    add(
        "--sampling_rate",
        type=float,
        default=d.sampling_rate,
        help=f"fraction of clients taking part in each round. Default: {d.sampling_rate}",
    )
    parser.add(
        parser.group("fedprox"),
        "fedprox",
        "--mu",
        type=float,
        default=0.05,
        help="FedProx proximal weight: the term mu/2 * ||w - w_global||^2. Default: 0.05",
    )


def _generative_flags(parser: FlagParser) -> None:
    """Flags of the DP generative models (names as in the paper's scripts)."""
    d = GenerativeConfig()
    g, s = parser.group("generative"), parser.group("synthesis")

    def add(*names: str, **kwargs) -> None:
        parser.add(g, "generative", *names, **kwargs)

    def synth(*names: str, **kwargs) -> None:
        parser.add(s, "synthesis", *names, **kwargs)

    add(
        "--n_fedavg_rounds",
        type=int,
        default=d.n_rounds,
        help=f"communication rounds of the generative model. Default: {d.n_rounds}"
        + preset_note("n_fedavg_rounds"),
    )
    add(
        "--local_epochs_gen",
        type=int,
        default=d.local_epochs,
        help=f"local epochs per round. Default: {d.local_epochs}" + preset_note("local_epochs_gen"),
    )
    add(
        "--gen_batch_size",
        type=int,
        default=d.batch_size,
        help="nominal batch size B (0: the whole client in every step); under DP, batches "
        f"are Poisson sampled at rate 1/ceil(n/B). Default: {d.batch_size}"
        + preset_note("gen_batch_size"),
    )
    add(
        "--latent_dim",
        type=int,
        default=d.latent_dim,
        help=f"latent size of the CVAE and of the CGAN. Default: {d.latent_dim}"
        + preset_note("latent_dim"),
    )
    synth(
        "--generated_factor",
        type=float,
        default=d.generated_factor,
        help=f"synthetic samples per real training sample. Default: {d.generated_factor}",
    )
    synth(
        "--synthetic_labels",
        choices=SYNTHETIC_LABELS,
        default=d.synthetic_labels,
        help="match: per class as many samples as the client holds (the paper); uniform: the "
        "same total spread evenly over all classes; balanced: spread evenly over the classes "
        "the client holds. Default: match" + preset_note("synthetic_labels"),
    )
    synth(
        "--squash_temperature",
        type=float,
        default=d.squash_temperature,
        help="t of the fixed squash sigmoid(u / t) that maps per-record standardized "
        "embeddings into (0, 1) for the sigmoid decoders (and where fidelity is measured). "
        f"Default: {d.squash_temperature}",
    )
    synth(
        "--save_synthetic",
        action="store_true",
        help="also write synthetic.npz into the run directory, for plots: every client's "
        "synthetic embeddings (model space) and labels, and the real training embeddings "
        "(model space) and labels of the largest client. Default: off",
    )
    add(
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
    cvae = parser.group("cvae")
    _cvae_flags(parser, cvae, d)
    parser.add(
        cvae,
        "cvae",
        "--cvae_beta",
        type=float,
        default=d.beta,
        help=f"weight of the KL term of the CVAE loss. Default: {d.beta}"
        + preset_note("cvae_beta"),
    )
    parser.add(
        cvae,
        "cvae",
        "--cvae_var",
        type=float,
        default=d.latent_var,
        help="scale of the latent draw when sampling, z = var * N(0, I), as in the paper's "
        f"code. Default: {d.latent_var}",
    )
    parser.add(
        cvae,
        "cvae",
        "--hidden_dim",
        type=int,
        default=d.hidden_dim,
        help=f"hidden width of the CVAE. Default: {d.hidden_dim}",
    )


def _cvae_flags(parser: FlagParser, cvae, d: GenerativeConfig) -> None:
    """The CVAE's own flags (beta, latent scale and width are the paper's; the rest is ours)."""

    def add(*names: str, **kwargs) -> None:
        parser.add(cvae, "cvae", *names, **kwargs)

    add(
        "--preset",
        choices=PRESETS,
        default=d.preset,
        help="the defaults of other flags: paper (the paper's settings) or dp (our DP recipe "
        "for epsilon <= 1, docs/dp_recipe.md: "
        + ", ".join(f"--{k} {v}" for k, v in PRESET_FLAGS["dp"].items())
        + "). A flag given explicitly overrides its preset value. "
        f"Default: {d.preset}",
    )
    add(
        "--cvae_loss",
        choices=("paper", "elbo"),
        default=d.cvae_loss,
        help="paper: MSE averaged over dimensions + beta x B x KL per sample (the paper's "
        "scaling; its KL weight collapses the posterior); elbo: the negative ELBO of a Gaussian "
        "likelihood with std --cvae_obs_std, summed over dimensions, + beta x KL. "
        f"Default: {d.cvae_loss}" + preset_note("cvae_loss"),
    )
    add(
        "--cvae_obs_std",
        type=float,
        default=d.obs_std,
        help="std of the Gaussian likelihood of --cvae_loss elbo, in the squashed space. "
        f"Default: {d.obs_std}",
    )
    add(
        "--cvae_layers",
        type=int,
        default=d.cvae_layers,
        help="hidden layers of the encoder and of the decoder (0: linear maps). "
        f"Default: {d.cvae_layers}" + preset_note("cvae_layers"),
    )
    add(
        "--cvae_encoder_scale",
        type=float,
        default=d.encoder_scale,
        help="fixed factor on the embedding before the encoder; a small one leaves DP-SGD's "
        "clipping norm to the decoder (the shared part). "
        f"Default: {d.encoder_scale}" + preset_note("cvae_encoder_scale"),
    )
    add(
        "--cvae_lr",
        type=float,
        default=None,
        help="Adam learning rate of the CVAE. Default: --lr, as the paper" + preset_note("cvae_lr"),
    )


def _cgan_flags(parser: FlagParser) -> None:
    d = GenerativeConfig()
    parser.add(
        parser.group("cgan"),
        "cgan",
        "--gan_lr",
        type=float,
        default=d.gan_lr,
        help=f"Adam learning rate of the CGAN (betas 0.5, 0.999). Default: {d.gan_lr}",
    )


def _pft_flags(parser: FlagParser) -> None:
    d = PFTConfig()
    parser.add(
        parser.group("pft"),
        "pft",
        "--pft_covariance",
        choices=COVARIANCES,
        default=d.covariance,
        help="covariance of each Gaussian: diag, full (D x D) or spherical (one variance). "
        f"Default: {d.covariance}",
    )
    parser.add(
        parser.group("fedpft"),
        "fedpft",
        "--pft_components",
        type=int,
        default=d.components,
        help="Gaussian mixture components per client and class (a class with fewer records "
        f"gets one per record). Default: {d.components}",
    )


def _dp_flags(parser: FlagParser) -> None:
    d = DPConfig()
    g = parser.group("dp")
    switch = g.add_mutually_exclusive_group()
    parser.add(
        switch,
        "dp",
        "--dp",
        choices=("on", "off"),
        default=None,  # on (None lets argparse see a clash with the spellings below)
        help="on: train the generative model with DP-SGD (dpfedpft: noise its release); off: "
        "without DP (an ablation: nothing is private, epsilon is infinite in the tables). "
        "Default: on",
    )
    parser.add(
        switch,
        "dp",
        "--enable_dp",
        dest="dp",
        action="store_const",
        const="on",
        help="the paper's spelling of --dp on. Default: on",
    )
    parser.add(
        switch,
        "dp",
        "--disable_dp",
        dest="dp",
        action="store_const",
        const="off",
        help="the paper's spelling of --dp off. Default: off (DP on)",
    )

    def add(*names: str, **kwargs) -> None:
        parser.add(g, "dp", *names, **kwargs)

    add(
        "--epsilon",
        type=float,
        default=d.epsilon,
        help="target epsilon of each client over the whole training (dpfedpft: its one "
        f"release). Default: {d.epsilon}",
    )
    add(
        "--delta",
        type=float,
        default=d.delta,
        help=f"target delta; should be below 1/n for every client. Default: {d.delta}",
    )
    sgd = parser.group("dpsgd")

    def add_sgd(*names: str, **kwargs) -> None:
        parser.add(sgd, "dpsgd", *names, **kwargs)

    add_sgd(
        "--max_grad_norm",
        type=float,
        default=d.max_grad_norm,
        help=f"per-sample gradient clipping norm. Default: {d.max_grad_norm}",
    )
    add_sgd(
        "--accountant",
        choices=ACCOUNTANTS,
        default=d.accountant,
        help="prv (a numerically tight upper bound, so less noise for the same guarantee) or "
        f"rdp (analytic, looser). Default: {d.accountant}",
    )
    add_sgd(
        "--dp_calibration",
        choices=CALIBRATIONS,
        default=d.calibration,
        help="total: noise calibrated for every DP step of the run, so the spent epsilon "
        "meets the target; paper: as the paper's code, noise for 20 epochs while training all "
        f"rounds (the reported spent epsilon exceeds the target). Default: {d.calibration}",
    )
    add_sgd(
        "--count_noise",
        type=float,
        default=d.count_noise,
        help="standard deviation of the Gaussian noise on each client's released record count "
        "(sensitivity 1), composed with DP-SGD in the same accountant: the noisy count sets "
        "the sampling rate, steps, expected batch size and FedAvg weight, so the guarantee "
        "holds for adding or removing a record end to end. 0 sends the exact count (then not "
        f"covered). Default: {COUNT_NOISE:g}",
    )
    add(
        "--secure_noise",
        action="store_true",
        help="draw every client's private randomness (DP noise, Poisson batches, noisy count, "
        "latent and synthetic draws) from a key of 32 bytes of OS entropy instead of the run "
        "seed: results vary from run to run, and knowing the seed no longer reproduces the "
        "noise (Flower sites always do this unless their node config says noise-source="
        "'seeded'). Default: off (seeded: reproducible simulation)",
    )
