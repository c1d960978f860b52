"""The method registry: every method the project runs, in the order that tables list them.

Each entry says what the method is in one line, which function runs it, which config sections
(flag groups of algorithms/flags.py) it reads, which of the paper's spellings select it,
whether it runs under Flower, whether what it shares is private, its client class, its
vectorized engine (if any) and how its run ends (its flow). `--method` and its help, the flag
checks, the run lifecycle, the generic federation code (generative.py, fedpft.py, the
vectorized path), the Flower apps, the audit, the tables and plots (via metrics.json) all read
this table: nothing else decides by a method's name. Adding a method: its module, one entry
here (its runner takes a RunContext and Configs), its flags in its config dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.vectorized import CGANEngine, CVAEEngine
from algorithms.methods.baselines import run_centralized, run_fedavg, run_local
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.dpfedavg import DPFedAvgClient, make_dpfedavg_clients, run_dpfedavg
from algorithms.methods.fedavg import FedAvgClient, FedAvgConfig, make_fedavg_clients
from algorithms.methods.fedpft import PFTClient, make_pft_clients, run_pft
from algorithms.methods.generative import make_clients
from algorithms.methods.generative_run import run_generative
from algorithms.methods.pft_config import PFTConfig
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.split_config import SplitConfig
from utils.checkpoint import RoundCheckpoint
from utils.device import ON_CPU, Execution


@dataclass(frozen=True)
class RunContext:
    """What every runner gets besides its configs: the clients' data, the number of classes,
    the run seed, the checkpoint of a federated run (None: none) and where it runs."""

    clients: list[ClientData]
    n_classes: int
    seed: int
    checkpoint: RoundCheckpoint | None = None
    execution: Execution = ON_CPU


@dataclass(frozen=True)
class Configs:
    """A run's configs by section (algorithms/flags.py CONFIGS); None where the method reads
    no flag of that config."""

    split: SplitConfig
    head: HeadConfig | None = None
    fedavg: FedAvgConfig | None = None
    generative: GenerativeConfig | None = None
    pft: PFTConfig | None = None
    dp: DPConfig | None = None


T = TypeVar("T")


def required(config: T | None, section: str) -> T:
    """A config section the method reads (so the run's configs hold it): the config itself,
    typed; a clear error where it is missing, which means a method reads a section its
    registry entry does not list."""
    if config is None:
        raise ValueError(f"the run's configs have no {section} section, which the method reads")
    return config


@dataclass(frozen=True)
class ClientSpec:
    """What builds a method's federated clients: every client's data (a simulation) or a
    site's own; a site's `secret` noise key; `n_sites` in a secure sum (None: `clients`)."""

    clients: list[ClientData]
    n_classes: int
    seed: int
    configs: Configs
    secret: bytes | None = None
    device: str = "cpu"
    n_sites: int | None = None


@runtime_checkable
class Accounted(Protocol):
    """A client that keeps privacy accounting: `privacy()` is its line of the privacy report
    (its `epsilon` read from its accountant, None without DP)."""

    def privacy(self) -> dict: ...


# A method's run: (context, configs) -> what evaluation needs.
Runner = Callable[[RunContext, Configs], Outcome]
# A method's federated clients from a ClientSpec (the factory a Flower site builds them with).
ClientFactory = Callable[[ClientSpec], list[Any]]
# How a run ends (fl/settings.py picks the Flower apps' flow by it): `head` (a head per client
# or one on pooled data, nothing federated), `fedavg` (a federated head), `generative` (a
# released decoder or generator, then synthesis and the lambda protocol), `pft` (one release
# of statistics, pooled once, then synthesis and the lambda protocol).
FLOWS = ("head", "fedavg", "generative", "pft")


@dataclass(frozen=True)
class Method:
    """One method. `sections`: the config sections whose flags apply to it (flags of other
    sections are refused); `aliases`: (flag, value) pairs of the paper's scripts that select
    it; `private`: what it shares is covered by DP, or it shares nothing; `client`: the class
    of its federated clients (None: not federated); `vectorized`: the engine that trains all
    its clients at once as one stacked model (None: no vectorized path); `flow`: how its run
    ends (FLOWS); `make_clients`: the factory of its clients (None: not federated). A Flower
    site builds a method's clients with `make_clients` only, and serves a private method with
    DP on only if `client` is Accounted (fl/policy.py)."""

    name: str
    help: str
    run: Runner
    sections: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()
    flower: bool = False
    private: bool = False
    client: type | None = None
    make_clients: ClientFactory | None = None
    vectorized: type | None = None
    flow: str = "head"

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ValueError(f"method {self.name!r}: flow must be one of {FLOWS}")


def _heads(run: Callable[..., Outcome]) -> Runner:
    # local, centralized: heads on real data, nothing federated
    def runner(ctx: RunContext, cfg: Configs) -> Outcome:
        head = required(cfg.head, "head")
        return run(ctx.clients, ctx.n_classes, head, ctx.seed, ctx.execution.device)

    return runner


def _fedavg(mixed: bool) -> Runner:
    # fedavg, fedprox; fedlambda (`mixed`): the FedAvg head mixed with a local head
    def runner(ctx: RunContext, cfg: Configs) -> Outcome:
        return run_fedavg(
            clients=ctx.clients,
            n_classes=ctx.n_classes,
            cfg=required(cfg.fedavg, "fedavg"),
            seed=ctx.seed,
            head_cfg=cfg.head if mixed else None,
            checkpoint=ctx.checkpoint,
            device=ctx.execution.device,
        )

    return runner


def _fedavg_clients(spec: ClientSpec) -> list[Any]:
    cfg = required(spec.configs.fedavg, "fedavg")
    return make_fedavg_clients(spec.clients, spec.n_classes, cfg, spec.seed, spec.device)


def _dpfedavg(ctx: RunContext, cfg: Configs) -> Outcome:
    return run_dpfedavg(
        clients=ctx.clients,
        n_classes=ctx.n_classes,
        cfg=required(cfg.fedavg, "fedavg"),
        dp=required(cfg.dp, "dp"),
        seed=ctx.seed,
        checkpoint=ctx.checkpoint,
        device=ctx.execution.device,
    )


def _dpfedavg_clients(spec: ClientSpec) -> list[Any]:
    return make_dpfedavg_clients(
        clients=spec.clients,
        n_classes=spec.n_classes,
        cfg=required(spec.configs.fedavg, "fedavg"),
        dp=required(spec.configs.dp, "dp"),
        seed=spec.seed,
        secret=spec.secret,
        device=spec.device,
        n_sites=spec.n_sites,
    )


def _generative_clients(name: str) -> ClientFactory:
    def make(spec: ClientSpec) -> list[Any]:
        return make_clients(
            method=name,
            clients=spec.clients,
            n_classes=spec.n_classes,
            cfg=required(spec.configs.generative, "generative"),
            dp=required(spec.configs.dp, "dp"),
            seed=spec.seed,
            secret=spec.secret,
            device=spec.device,
            n_sites=spec.n_sites,
        )

    return make


def _pft_clients(name: str) -> ClientFactory:
    def make(spec: ClientSpec) -> list[Any]:
        return make_pft_clients(
            method=name,
            clients=spec.clients,
            n_classes=spec.n_classes,
            cfg=required(spec.configs.pft, "pft"),
            gen_cfg=required(spec.configs.generative, "generative"),
            dp=spec.configs.dp,
            seed=spec.seed,
            secret=spec.secret,
            n_sites=spec.n_sites,
        )

    return make


def _generative(name: str) -> Runner:
    def run(ctx: RunContext, cfg: Configs) -> Outcome:
        return run_generative(
            method=name,
            clients=ctx.clients,
            n_classes=ctx.n_classes,
            cfg=required(cfg.generative, "generative"),
            dp=required(cfg.dp, "dp"),
            head_cfg=required(cfg.head, "head"),
            seed=ctx.seed,
            checkpoint=ctx.checkpoint,
            execution=ctx.execution,
        )

    return run


def _pft(name: str) -> Runner:
    # one release of statistics computed with numpy: on the CPU, whatever the --device
    def run(ctx: RunContext, cfg: Configs) -> Outcome:
        return run_pft(
            method=name,
            clients=ctx.clients,
            n_classes=ctx.n_classes,
            cfg=required(cfg.pft, "pft"),
            gen_cfg=required(cfg.generative, "generative"),
            dp=cfg.dp,
            head_cfg=required(cfg.head, "head"),
            seed=ctx.seed,
        )

    return run


# The methods, in display order (tables, plots, --help).
METHODS = (
    Method(
        "local",
        "a head per client on its own data; nothing is shared",
        _heads(run_local),
        ("head",),
        aliases=(("aggregator_type", "local"),),
        private=True,
    ),
    Method(
        "centralized",
        "one head on the pooled data of every client (not private: an upper bound)",
        _heads(run_centralized),
        ("head",),
    ),
    Method(
        "fedavg",
        "a linear head trained federatedly (FedAvg)",
        _fedavg(mixed=False),
        ("fedavg",),
        aliases=(("algorithm", "normal"),),
        flower=True,
        client=FedAvgClient,
        make_clients=_fedavg_clients,
        flow="fedavg",
    ),
    Method(
        "fedprox",
        "FedAvg with the proximal term mu/2 ||w - w_global||^2 in each client's loss",
        _fedavg(mixed=False),
        ("fedavg", "fedprox"),
        aliases=(("algorithm", "fedprox"),),
        flower=True,
        client=FedAvgClient,
        make_clients=_fedavg_clients,
        flow="fedavg",
    ),
    Method(
        "fedlambda",
        "the FedAvg head mixed with a local head by the lambda protocol",
        _fedavg(mixed=True),
        ("head", "fedavg", "lambda"),
        client=FedAvgClient,
        make_clients=_fedavg_clients,
        flow="fedavg",
    ),
    Method(
        "dpfedavg",
        "the FedAvg head trained with DP-SGD at each client (the private federated classifier; "
        "noise calibrated for the whole run, noisy counts as the FedAvg weights)",
        _dpfedavg,
        ("fedavg", "dp", "dpsgd"),
        flower=True,
        private=True,
        client=DPFedAvgClient,
        make_clients=_dpfedavg_clients,
        flow="fedavg",
    ),
    Method(
        "dpcgan",
        "a DP conditional GAN trained federatedly (generators averaged); its synthetic data "
        "trains a head that the lambda protocol mixes with a local head",
        _generative("dpcgan"),
        ("head", "lambda", "generative", "synthesis", "cgan", "dp", "dpsgd"),
        aliases=(("anonymizer", "cgan_fedavg"),),
        flower=True,
        private=True,
        client=CGANClient,
        make_clients=_generative_clients("dpcgan"),
        vectorized=CGANEngine,
        flow="generative",
    ),
    Method(
        "dpcvae",
        "the paper's method: a DP conditional VAE trained federatedly (decoders averaged); its "
        "synthetic data trains a head that the lambda protocol mixes with a local head",
        _generative("dpcvae"),
        ("head", "lambda", "generative", "synthesis", "cvae", "dp", "dpsgd"),
        aliases=(("anonymizer", "cvae_fedavg"),),
        flower=True,
        private=True,
        client=CVAEClient,
        make_clients=_generative_clients("dpcvae"),
        vectorized=CVAEEngine,
        flow="generative",
    ),
    Method(
        "fedpft",
        "FedPFT (not private): per client and class a Gaussian mixture, sent once; the pooled "
        "mixtures' synthetic data trains a head that the lambda protocol mixes with a local head",
        _pft("fedpft"),
        ("head", "lambda", "synthesis", "pft", "fedpft"),
        flower=True,
        client=PFTClient,
        make_clients=_pft_clients("fedpft"),
        flow="pft",
    ),
    Method(
        "dpfedpft",
        "DP-FedPFT: per client one Gaussian-mechanism release of every class's count, sum and "
        "second moment; the pooled Gaussians' synthetic data trains a head that the lambda "
        "protocol mixes with a local head",
        _pft("dpfedpft"),
        ("head", "lambda", "synthesis", "pft", "dp"),
        flower=True,
        private=True,
        client=PFTClient,
        make_clients=_pft_clients("dpfedpft"),
        flow="pft",
    ),
)
NAMES = tuple(m.name for m in METHODS)


def get(name: str) -> Method:
    """The registry entry of `name` (ValueError naming the known methods otherwise)."""
    for m in METHODS:
        if m.name == name:
            return m
    raise ValueError(f"method {name!r} is not known (one of {', '.join(NAMES)})")


def using(section: str) -> tuple[str, ...]:
    """The methods whose flags include `section`'s, in display order."""
    return tuple(m.name for m in METHODS if section in m.sections)


def aliases(flag: str) -> dict[str, str]:
    """The paper's values of `flag` (e.g. 'algorithm') and the method each selects."""
    return {value: m.name for m in METHODS for f, value in m.aliases if f == flag}


def with_flow(flow: str) -> tuple[str, ...]:
    """The methods whose run ends with `flow` (FLOWS), in display order."""
    return tuple(m.name for m in METHODS if m.flow == flow)


def flower_methods() -> tuple[str, ...]:
    """The methods that run under Flower (fl/), in display order."""
    return tuple(m.name for m in METHODS if m.flower)
