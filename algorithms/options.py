"""From main.py's command line to what a run needs: its method (a registry entry) and its
validated config dataclasses, one per section the method reads.

Checks that no flag given explicitly belongs to a section the method does not read (`--mu`
with dpcvae, `--epsilon` with local): such a flag would be ignored, so it is refused with the
methods that use it. main.py, the Flower apps and fl/run_local.py all call `load_settings`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from algorithms import presets
from algorithms.flags import (
    CONFIGS,
    FlagParser,
    UsageError,
    build_config,
    build_parser,
    check_run_flags,
    config_sections,
    resolve_method,
    spelling,
)
from algorithms.methods import registry
from algorithms.methods.registry import Configs, Method
from algorithms.privacy.accounting import check_count_noise
from algorithms.privacy.opacus_compat import check_opacus
from algorithms.privacy.secure_dpsgd import check_schedule
from data.split_config import split_config_from_args
from utils.cli import flag_name
from utils.device import ON_CPU, Execution, resolve_device

__all__ = ["Settings", "UsageError", "check_before_run", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """A run's command line, its parsed flags, its method, its configs (typed, by section), and
    how it computes (device and path: not part of the configuration)."""

    argv: tuple[str, ...]
    args: argparse.Namespace
    method: Method
    configs: Configs
    execution: Execution = ON_CPU

    @property
    def seed(self) -> int:
        return int(self.args.seed)


def load_settings(argv: Sequence[str], description: str | None = None) -> Settings:
    """Parse and check a command line. Usage errors of argparse itself exit with status 2 and
    one line (utils.cli.Parser); every other problem raises UsageError naming the flag. Runs no
    accountant (`check_before_run` does, when the run starts)."""
    parser = build_parser(description)
    args = parser.parse_args(list(argv))
    method = resolve_method(parser, args)
    given = given_flags(parser, argv, args)
    check_applicable(parser, given, method)
    apply_preset(args, given)
    check_run_flags(parser, args)
    try:
        configs = build_configs(args, method)
        execution = resolve_execution(args, method)
        check_secure(method, configs, execution)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return Settings(tuple(argv), args, method, configs, execution)


def check_before_run(settings: Settings) -> None:
    """What a run checks as it starts, before any output: the privacy settings that need the
    accountant (a count noise that alone spends the target epsilon)."""
    try:
        check_count_noise(settings.configs.dp)
    except ValueError as err:
        raise UsageError(str(err)) from None


def resolve_execution(args: argparse.Namespace, method: Method) -> Execution:
    """--device (auto: CUDA when available) and --vectorized (auto: on with CUDA, off on CPU;
    only the generative methods have a vectorized path)."""
    device = resolve_device(args.device, spelling("device"))
    if "generative" not in method.sections:
        return Execution(device, vectorized=False)
    choice = {"on": True, "off": False, "auto": device == "cuda"}[args.vectorized]
    return Execution(device, vectorized=choice)


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
                f"{names} does not apply to {spelling('method')} {method.name} (it is used by "
                f"{users})"
            )


def apply_preset(args: argparse.Namespace, given: frozenset[str]) -> None:
    """Give the flags that --preset sets its values, unless given explicitly."""
    for dest, value in presets.flags(args.preset).items():
        if dest not in given:
            setattr(args, dest, value)


# --- one config dataclass per section (a method gets those of the sections it reads) ---------


def build_configs(args: argparse.Namespace, method: Method) -> Configs:
    """The split config and the config of every section the method reads (each dataclass
    raises ValueError naming its flag); None for the others."""
    built: dict[str, Any] = {
        name: build_config(name, args, method)
        for name, cls in CONFIGS.items()
        if config_sections(cls) & set(method.sections)
    }
    configs = Configs(split=split_config_from_args(args, args.split_seed), **built)
    dp = configs.dp
    if dp is not None and dp.enabled and dp.accountant is not None:  # DP-SGD
        check_opacus()
    return configs


def present_configs(configs: Configs) -> dict[str, Any]:
    """The configs a run has (not None), by section, in config.json's order: the split's,
    then those of flags.CONFIGS in its order (Configs' field order)."""
    values = {f.name: getattr(configs, f.name) for f in fields(configs)}
    return {name: cfg for name, cfg in values.items() if cfg is not None}


def check_secure(method: Method, configs: Configs, execution: Execution) -> None:
    """What --secure_aggregation needs, refused in one line before the run starts: DP on, a
    method with a secure round (its client's `secure`), one full-batch DP step per round, the
    per-client path."""
    dp = configs.dp
    if dp is None or not dp.secure_aggregation:
        return
    flag = flag_name(dp, "secure_aggregation")
    if not dp.enabled:
        raise ValueError(f"{flag} adds noise shares: it needs DP on")
    if not getattr(method.client, "secure", False):
        secure = [m for m in registry.METHODS if m.private and getattr(m.client, "secure", False)]
        names = ", ".join(m.name for m in secure)
        raise ValueError(f"{flag}: {method.name} has no secure round (methods with one: {names})")
    gen = configs.generative if "generative" in method.sections else None
    fed = configs.fedavg if "fedavg" in method.sections else None
    if gen is not None and (gen.batch_size != 0 or gen.local_epochs != 1):
        what = (
            f"{flag_name(gen, 'local_epochs')} {gen.local_epochs} "
            f"{flag_name(gen, 'batch_size')} {gen.batch_size}"
        )
        check_schedule(gen.local_epochs if gen.batch_size == 0 else 0, what)
    if fed is not None and fed.local_steps != 1:
        check_schedule(fed.local_steps, f"{flag_name(fed, 'local_steps')} {fed.local_steps}")
    if execution.vectorized:
        raise ValueError(f"{flag} has no vectorized path ({spelling('vectorized')} off)")
