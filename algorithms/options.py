"""From main.py's command line to what a run needs: its method (a registry entry) and its
validated config dataclasses, one per section the method reads.

Checks that no flag given explicitly belongs to a section the method does not read (`--mu`
with dpcvae, `--epsilon` with local): such a flag would be ignored, so it is refused with the
methods that use it. main.py, the Flower apps and fl/run_local.py all call `load_settings`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import lambda_grid
from algorithms.flags import PRESET_FLAGS, FlagParser, build_parser
from algorithms.methods import registry
from algorithms.methods.fedavg import FedAvgConfig
from algorithms.methods.fedpft import PFTConfig
from algorithms.methods.registry import Method
from algorithms.privacy.accounting import DPConfig
from algorithms.privacy.dp_client import GenerativeConfig
from algorithms.privacy.opacus_compat import check_opacus
from data.partition import split_config_from_args
from utils.device import ON_CPU, Execution, resolve_device


class UsageError(ValueError):
    """Bad flags: the message names the flag."""


@dataclass(frozen=True)
class Settings:
    """A run's command line, its parsed flags, its method, its configs by section, and how it
    computes (device and path: not part of the configuration)."""

    argv: tuple[str, ...]
    args: argparse.Namespace
    method: Method
    configs: dict
    execution: Execution = ON_CPU

    @property
    def seed(self) -> int:
        return int(self.args.seed)


def load_settings(argv: Sequence[str], description: str | None = None) -> Settings:
    """Parse and check a command line. Usage errors of argparse itself exit with status 2 and
    one line (utils.cli.Parser); every other problem raises UsageError naming the flag."""
    parser = build_parser(description)
    args = parser.parse_args(list(argv))
    method = resolve_method(args)
    given = given_flags(parser, argv, args)
    check_applicable(parser, given, method)
    apply_preset(args, given)
    check_run_flags(args)
    try:
        configs = build_configs(args, method)
        execution = resolve_execution(args, method)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return Settings(tuple(argv), args, method, configs, execution)


def resolve_execution(args: argparse.Namespace, method: Method) -> Execution:
    """--device (auto: CUDA when available) and --vectorized (auto: on with CUDA, off on CPU;
    only the generative methods have a vectorized path)."""
    device = resolve_device(args.device)
    if "generative" not in method.sections:
        return Execution(device, vectorized=False)
    choice = {"on": True, "off": False, "auto": device == "cuda"}[args.vectorized]
    return Execution(device, vectorized=choice)


def resolve_method(args: argparse.Namespace) -> Method:
    """--method, or the paper's --algorithm / --anonymizer / --aggregator_type (which must
    agree with each other)."""
    if args.aggregator_type == "centralized":
        raise UsageError(
            "--aggregator_type centralized names the paper's FedAvg server, not a method: "
            f"choose one with --method ({', '.join(registry.NAMES)}); one head on the pooled "
            "data is --method centralized"
        )
    candidates = []
    if args.method:
        candidates.append(("--method", args.method))
    for flag in ("algorithm", "anonymizer", "aggregator_type"):
        value = getattr(args, flag)
        if value is not None:
            candidates.append((f"--{flag}", registry.aliases(flag)[value]))
    if not candidates:
        raise UsageError(f"--method is required (one of {', '.join(registry.NAMES)})")
    names = {m for _, m in candidates}
    if len(names) > 1:
        given = ", ".join(f"{flag} -> {m}" for flag, m in candidates)
        raise UsageError(f"conflicting method flags: {given}")
    return registry.get(names.pop())


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str], args) -> frozenset[str]:
    """The dests that `argv` sets explicitly (also to their default value): `argv` parsed again
    into a namespace where every dest is already set, so argparse fills in no default."""
    unset = object()
    probe = argparse.Namespace(**dict.fromkeys(vars(args), unset))
    parser.parse_args(list(argv), namespace=probe)
    return frozenset(k for k, v in vars(probe).items() if v is not unset)


def check_applicable(parser: FlagParser, given: frozenset[str], method: Method) -> None:
    """Refuse a flag given explicitly whose section `method` does not read."""
    for dest, section in parser.section_of.items():
        if dest in given and section not in method.sections:
            names = "/".join(parser.names_of[dest])
            users = ", ".join(registry.using(section))
            raise UsageError(
                f"{names} does not apply to --method {method.name} (it is used by {users})"
            )


def apply_preset(args: argparse.Namespace, given: frozenset[str]) -> None:
    """Give the flags that --preset sets its values, unless given explicitly."""
    preset = getattr(args, "preset", "paper")
    for dest, value in PRESET_FLAGS[preset].items():
        if dest not in given:
            setattr(args, dest, value)


def check_run_flags(args: argparse.Namespace) -> None:
    """The flags of the experiment itself that no config dataclass checks."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if args.resume and getattr(args, "secure_noise", False):
        raise UsageError(
            "--resume does not apply to --secure_noise runs: their clients' secret keys are "
            "not kept, so a resumed run could not continue their noise streams"
        )
    for flag in ("seed", "split_seed", "num_threads"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if not (args.checkpoint_interval >= 0 and math.isfinite(args.checkpoint_interval)):
        raise UsageError(f"--checkpoint_interval must be >= 0, got {args.checkpoint_interval}")
    try:
        lambda_grid(args.weights_grid_resolution)
    except ValueError as err:
        raise UsageError(str(err)) from None


# --- one config dataclass per section (a method gets those of the sections it reads) ---------


def head_config(args: argparse.Namespace, method: Method) -> HeadConfig:
    return HeadConfig(args.local_epochs, args.lr, args.weight_decay, args.classifier_optimizer)


def fedavg_config(args: argparse.Namespace, method: Method) -> FedAvgConfig:
    return FedAvgConfig(
        n_rounds=args.n_rounds,
        local_steps=args.fedavg_local_epochs,
        batch_size=args.bz,
        lr=args.fedavg_lr,
        optimizer=args.optimizer,
        lr_scheduler=args.lr_scheduler,
        mu=args.mu if "fedprox" in method.sections else 0.0,
        sampling_rate=args.sampling_rate,
    )


def generative_config(args: argparse.Namespace, method: Method) -> GenerativeConfig:
    return GenerativeConfig(
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
        cvae_loss=args.cvae_loss,
        obs_std=args.cvae_obs_std,
        cvae_layers=args.cvae_layers,
        encoder_scale=args.cvae_encoder_scale,
        cvae_lr=args.cvae_lr,
        preset=args.preset,
    )


def pft_config(args: argparse.Namespace, method: Method) -> PFTConfig:
    components = args.pft_components if "fedpft" in method.sections else 1
    return PFTConfig(components=components, covariance=args.pft_covariance)


def dp_config(args: argparse.Namespace, method: Method) -> DPConfig:
    enabled = args.dp != "off"  # on unless switched off (--dp off, --disable_dp)
    sgd = "dpsgd" in method.sections  # else a one-shot release: no clipping, no accountant
    if enabled and sgd:
        check_opacus()
    return DPConfig(
        enabled=enabled,
        epsilon=args.epsilon,
        delta=args.delta,
        max_grad_norm=args.max_grad_norm if sgd else None,
        accountant=args.accountant if sgd else None,
        calibration=args.dp_calibration if sgd else None,
        count_noise=args.count_noise if sgd else 0.0,
        noise_source="secure" if args.secure_noise else "seeded",
    )


# In this order in config.json.
CONFIG_BUILDERS: dict[str, Callable[[argparse.Namespace, Method], object]] = {
    "head": head_config,
    "fedavg": fedavg_config,
    "generative": generative_config,
    "pft": pft_config,
    "dp": dp_config,
}
# A config is built for a method that reads any of its sections: the synthetic-data flags are
# read through GenerativeConfig by every method that synthesizes.
CONFIG_SECTIONS = {"generative": ("generative", "synthesis")}


def build_configs(args: argparse.Namespace, method: Method) -> dict:
    """The split config and the config of every section the method reads (each dataclass
    raises ValueError naming its flag)."""
    configs: dict = {"split": split_config_from_args(args, args.split_seed)}
    for name, build in CONFIG_BUILDERS.items():
        if set(CONFIG_SECTIONS.get(name, (name,))) & set(method.sections):
            configs[name] = build(args, method)
    return configs
