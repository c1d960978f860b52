"""What a run costs a site (`run_charge`) and its identity in the site's ledger (`run_binding`),
both computed by the site from the run's settings and public facts (the number of sites, the
embedding size and classes), never from its records.

Under secure aggregation (`--secure_aggregation`) a run has two guarantees (algorithms/privacy/
secure_aggregation.py): `epsilon` while at least m (`--min_honest_sites`) honest sites are in
every sum, and `epsilon_collusion` against a coordinator colluding with every other site (the
site's own share alone). The site computes both from the public plan its client builds (the same
function, the same arguments), so the client's reported epsilon never exceeds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from algorithms.methods import registry
from algorithms.methods.generative import secure_plan
from algorithms.methods.pft_server import pft_plan
from algorithms.options import Settings
from algorithms.privacy.config import DPConfig
from algorithms.privacy.secure_aggregation import SecurePlan
from algorithms.privacy.secure_dpsgd import count_rdp
from algorithms.run_files import shares_dp
from utils.cli import flag_name

# DP fields added after sites had bound runs: hashed into a binding only when they differ from
# these values, so every run bound before keeps its binding.
BOUND_WHEN_NOT = {("dp", "secure_aggregation"): False, ("dp", "min_honest_sites"): 1}


@dataclass(frozen=True)
class RunCharge:
    """What a run spends on a site, (epsilon, delta): `epsilon` is the target its noise is
    calibrated for (under secure aggregation: the guarantee while m honest sites are in every
    sum), None (unbounded) for a run that shares without DP; `epsilon_collusion` and
    `min_honest_sites` are set for a secure run only."""

    epsilon: float | None
    delta: float
    epsilon_collusion: float | None = None
    min_honest_sites: int | None = None

    @property
    def secure(self) -> bool:
        """Whether the run sums noise shares under secure aggregation (two guarantees)."""
        return self.epsilon_collusion is not None


def is_secure(settings: Settings) -> bool:
    """Whether the run shares DP releases as noise shares under secure aggregation."""
    dp = settings.configs.dp
    return shares_dp(settings) and dp is not None and dp.secure_aggregation


def secure_run_plan(settings: Settings, n_sites: int, shape: tuple[int, int]) -> SecurePlan:
    """The public plan of a secure run's releases, as the site's client builds it (dpcvae's
    rounds: generative.secure_plan; dpfedpft's release: pft_server.pft_plan); ValueError (one
    line naming the flag) for a run that has none. `shape`: (embedding size, classes)."""
    method, configs = settings.method, settings.configs
    dp = registry.required(configs.dp, "dp")
    plan: SecurePlan | None = None
    if method.flow == "pft":
        pft = registry.required(configs.pft, "pft")
        plan = pft_plan(method.name, pft, dp, shape, (n_sites, settings.seed))
    elif method.flow == "generative":  # refused there for a method without a secure round
        plan = secure_plan(
            method=method.name,
            dim=shape[0],
            n_classes=shape[1],
            cfg=registry.required(configs.generative, "generative"),
            dp=dp,
            sites=(n_sites, settings.seed),
        )
    if plan is None:
        raise ValueError(
            f"{flag_name(DPConfig, 'secure_aggregation')}: {method.name} has no secure round"
        )
    return plan


def run_charge(settings: Settings, *, n_sites: int, shape: tuple[int, int]) -> RunCharge:
    """What the run will spend on this site: the target the site calibrates its noise for
    (DP-SGD over every step of the run, with the noisy count; DP-FedPFT's one analytic-Gaussian
    release), which the accountant's spent epsilon never exceeds; under secure aggregation both
    epsilons of its plan over the whole run (the count's release composed), computed as the
    client computes them. ValueError (one line naming the flag) for a secure run without a
    plan. `n_sites`: the sites in a sum; `shape`: (embedding size, classes)."""
    if not shares_dp(settings):
        return RunCharge(None, 0.0)
    dp = registry.required(settings.configs.dp, "dp")  # shares_dp
    if not is_secure(settings):
        return RunCharge(float(dp.epsilon), float(dp.delta))
    plan = secure_run_plan(settings, n_sites, shape)
    both = plan.guarantees(dp.delta, count_rdp(dp.count_noise))
    return RunCharge(
        epsilon=float(both.epsilon),
        delta=float(dp.delta),
        epsilon_collusion=float(both.epsilon_collusion),
        min_honest_sites=int(both.min_honest_sites),
    )


def _bound(section: str, key: str, value: object) -> bool:
    """Whether a config field is hashed into the binding (BOUND_WHEN_NOT: not at its value)."""
    return (section, key) not in BOUND_WHEN_NOT or BOUND_WHEN_NOT[(section, key)] != value


def run_binding(settings: Settings) -> str:
    """A hash of everything that determines what the run spends and releases (method, seed,
    every config: DP settings, rounds, local epochs, batch size, sampling, calibration,
    accountant, noise, secure aggregation when set): a run ID is bound to it at its first claim
    in the ledger."""
    configs = {}
    for f in dataclasses.fields(settings.configs):
        cfg = getattr(settings.configs, f.name)
        if cfg is None:
            continue
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if _bound(f.name, k, v)}
        configs[f.name] = cfg
    text = json.dumps(
        {"method": settings.method.name, "seed": settings.seed, "configs": configs},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()
