"""FedPFT and DP-FedPFT (Beitollahi et al. 2024, arXiv 2402.01862): class-conditional Gaussians
sent once, in the same protocol as DP-CVAE (one round, then synthesis.py's end of run).

fedpft (not private): each client fits, per class it holds, a Gaussian mixture (scikit-learn,
`--pft_components` K, `--pft_covariance`) to its training embeddings (per-record standardized,
`ClientData.x_train`) and sends it once with its class counts. The server pools them: per class,
the mixture of every client's components, each weighted by the client's count of the class times
the component's weight.

dpfedpft: each client releases once, for EVERY class (a class it lacks releases noise only, so
the set of classes it holds is not revealed), the record count n_c, the sum s_c and the second
moment m_c (diag: sum of x * x; full: sum of x x^T; spherical: none), with the Gaussian mechanism.

Sensitivity (add/remove one record x of class c). Records are per-record standardized, so
||x|| = sqrt(D) (0 for a constant row); they are clipped to norm sqrt(D) anyway, so that the bound
does not rest on the preprocessing. One record changes class c's part only: the count by 1, the
sum by x (L2 norm <= sqrt(D)), the moment by x * x (L2 norm sqrt(sum x_j^4) <= ||x||^2 <= D) or by
x x^T (Frobenius norm ||x||^2 <= D). The release is the scaled vector (n_c, s_c / sqrt(D),
m_c / D) over all classes: its L2 sensitivity is sqrt(3) (sqrt(2) for spherical), and every
coordinate gets Gaussian noise of std sigma * sensitivity. One noise multiplier sigma, calibrated
by the analytic Gaussian mechanism (calibrate_release in algorithms/privacy/accounting.py, from
algorithms/privacy/analytic_gaussian.py), makes this one release spend the target epsilon at
delta. A full moment is symmetric: its upper triangle (L2 norm <= Frobenius) is noised and
mirrored. Spherical needs no moment: every record has ||x||^2 = D, so a class's total
second moment is D n_c, a function of its count, and its variance per dimension 1 - ||mean||^2 / D.

Post-processing of the pooled sums (the noise is already in, so it costs no privacy): a class
whose pooled count is below max(1, MIN_COUNT_STDS x the std of the pooled count's noise) is
dropped from sampling (without noise: a class no client holds); the count is clipped to >= 1;
mean = sum / count; variances (diag, spherical) and covariance eigenvalues (full) are floored at
VARIANCE_FLOOR, which projects the covariance to positive definite.

What crosses the network, as float32: a client's release (once), and back the pooled mixture
(one Gaussian per class for dpfedpft). The statistics, fits, pooling and sampling, and the
constants named here, are in algorithms/methods/gaussians.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, run_federation
from algorithms.methods.gaussians import (
    COVARIANCES,
    fit_mixtures,
    noisy_statistics,
    pool_mixtures,
    pool_statistics,
    sample_mixture,
    scale_shape,
    to_float32,
)
from algorithms.methods.generative import generative_outcome
from algorithms.methods.synthesis import (
    finish_clients,
    global_synthetic_head,
    pooled_synthetic_report,
)
from algorithms.privacy.accounting import (
    ANALYTIC_GAUSSIAN,
    NOT_COVERED,
    calibrate_release,
    privacy_report,
    release_epsilon,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import squash
from utils.cli import flag, flag_name
from utils.seeding import DP_NOISE, GENERATIVE_CLIENT, derive_seed, new_secret, private_generator

if TYPE_CHECKING:
    from algorithms.methods.registry import Method


def pft_method(method: str) -> Method:
    """The registry entry of a FedPFT method (looked up when called: the registry imports this
    module)."""
    from algorithms.methods import registry

    entry = registry.get(method)
    if entry.flow != "pft":
        names = ", ".join(registry.with_flow("pft"))
        raise ValueError(f"{method!r} is not a FedPFT method ({names})")
    return entry


def dp_of(method: str, dp: DPConfig | None) -> DPConfig:
    """The DP config of a method that releases DP statistics (it reads the dp section, so the
    run has one); ValueError naming the method otherwise."""
    if dp is None:
        raise ValueError(f"{method}: its DP release needs the run's DP config (the dp section)")
    return dp


def release_dp(method: str) -> bool:
    """Whether the FedPFT method releases DP statistics (dpfedpft's noised counts, sums and
    moments) rather than fedpft's Gaussian mixtures: its registry entry's `private`."""
    return pft_method(method).private


@dataclass(frozen=True)
class PFTConfig:
    """FedPFT's Gaussians: `components` per class (fedpft; dpfedpft releases one Gaussian per
    class) and their covariance type, as the Flower baseline offers them."""

    components: int = field(
        default=1,
        metadata=flag(
            "--pft_components",
            section="fedpft",
            unused=1,  # dpfedpft releases one Gaussian per class
            help="Gaussian mixture components per client and class (a class with fewer "
            "records gets one per record). Default: {default}",
        ),
    )
    covariance: str = field(
        default="diag",
        metadata=flag(
            "--pft_covariance",
            section="pft",
            choices=COVARIANCES,
            help="covariance of each Gaussian: diag, full (D x D) or spherical (one variance). "
            "Default: {default}",
        ),
    )

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        if self.components < 1:
            raise ValueError(f"{name('components')} must be >= 1, got {self.components}")
        if self.covariance not in COVARIANCES:
            raise ValueError(
                f"{name('covariance')} must be one of {COVARIANCES}, got {self.covariance!r}"
            )


def sensitivity(covariance: str) -> float:
    """L2 sensitivity of dpfedpft's scaled release (count, sum / sqrt(D), moment / D) under
    add/remove-one: each part moves by at most 1 (module docstring); spherical has no moment."""
    return math.sqrt(2.0) if covariance == "spherical" else math.sqrt(3.0)


def release_size(method: str, cfg: PFTConfig, dim: int, n_classes: int) -> int:
    """Numbers one client releases (once): the same for every client (fixed shapes)."""
    cov = math.prod(scale_shape(cfg.covariance, dim))
    if not release_dp(method):
        return n_classes * (1 + cfg.components * (1 + dim + cov))
    moment = {"diag": dim, "full": dim * dim, "spherical": 0}[cfg.covariance]
    return n_classes * (1 + dim + moment)


def pooler(
    method: str, cfg: PFTConfig, dp: DPConfig | None
) -> Callable[[Sequence[ClientUpdate]], StateDict]:
    """The server's step of `method` (the `aggregate` of the one round)."""
    if not release_dp(method):
        return lambda updates: pool_mixtures([u.weights for u in updates])
    noise_std = calibrate_release(dp_of(method, dp)) * sensitivity(cfg.covariance)
    return lambda updates: pool_statistics([u.weights for u in updates], cfg.covariance, noise_std)


@dataclass(frozen=True)
class PooledSampler:
    """Sampling from the pooled Gaussians (a synthesis.Sampler), on a site or on the server:
    it needs nothing but the pooled statistics and the squash temperature."""

    temperature: float

    def can_sample(self, weights: StateDict) -> np.ndarray:
        """Per class, whether the pooled mixture holds it (module docstring: dropped classes)."""
        return (weights["weights"].sum(1) > 0).numpy()

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """Synthetic embeddings in model space (squashed, as the other generative methods')."""
        return squash(sample_mixture(weights, labels, rng), self.temperature)


class PFTClient:
    """One site of fedpft or dpfedpft: releases its statistics once (`fit`), samples from the
    pooled Gaussians (`sample`). Its noise comes from one private generator, as a DP-CVAE
    client's (the DP_NOISE stream: of its client seed, or of its secret key under secure
    noise)."""

    def __init__(
        self,
        method: str,
        data: ClientData,
        n_classes: int,
        cfg: PFTConfig,
        gen_cfg: GenerativeConfig,
        dp: DPConfig | None,
        seed: int,
        secret: bytes | None = None,
    ):
        pft_method(method)
        self.method, self.id, self.data, self.n_classes = method, data.id, data, n_classes
        self.cfg, self.temperature, self.dp, self.seed = cfg, gen_cfg.squash_temperature, dp, seed
        noised = release_dp(method) and dp is not None and dp.enabled
        self.noise_multiplier = calibrate_release(dp_of(method, dp)) if noised else None
        secure = dp is not None and dp.noise_source == "secure"
        self.secret = (secret or new_secret()) if secure else None
        self.rng_noise = private_generator(seed, DP_NOISE, secret=self.secret)
        self.released = False
        self.device = torch.device("cpu")  # numpy statistics: the heads train on the CPU too

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """The one release (round 0 only, once: a second release would spend the budget
        again). Its sample count is 0: the server pools the released counts, and the true
        count does not leave the client."""
        if self.released or rnd != 0:
            raise RuntimeError(f"client {self.id}: {self.method} releases once, in round 1 only")
        x, y, c = self.data.x_train, self.data.y_train, self.n_classes
        if not release_dp(self.method):
            release = fit_mixtures(x, y, c, self.cfg.components, self.cfg.covariance, self.seed)
        else:
            std = (self.noise_multiplier or 0.0) * sensitivity(self.cfg.covariance)
            release = noisy_statistics(x, y, c, self.cfg.covariance, std, self.rng_noise)
        self.released = True
        metrics = {"epsilon": self.epsilon()} if self.noise_multiplier else {}
        return ClientUpdate(to_float32(release), 0, metrics)

    def epsilon(self) -> float:
        """The epsilon spent so far: the release's, once it is made."""
        if not self.released:
            return 0.0
        if self.noise_multiplier is None:
            raise ValueError(f"client {self.id}: {self.method} made no DP release (no epsilon)")
        return release_epsilon(self.noise_multiplier, dp_of(self.method, self.dp).delta)

    @property
    def noise_source(self) -> str:
        """Where this client's release noise actually came from: `secure` when its generator is
        keyed by a secret (a Flower site's own key, or --secure_noise), `seeded` otherwise."""
        return "secure" if self.secret is not None else "seeded"

    def privacy(self) -> dict:
        """This client's line of the privacy report, with the noise source it actually used
        (so a report never takes it from the coordinator's flags)."""
        if self.noise_multiplier is None:
            return {"id": self.id, "noise_source": self.noise_source, "epsilon": None}
        sens = sensitivity(self.cfg.covariance)
        return {
            "id": self.id,
            "noise_source": self.noise_source,
            "mechanism": "gaussian, one release",
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": sens,
            "noise_std": self.noise_multiplier * sens,
            "epsilon": self.epsilon(),
        }

    def can_sample(self, weights: StateDict) -> np.ndarray:
        return PooledSampler(self.temperature).can_sample(weights)

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        return PooledSampler(self.temperature).sample(weights, labels, rng)

    def state_dict(self) -> dict:
        return {"released": self.released}

    def load_state_dict(self, state: dict) -> None:
        self.released = bool(state["released"])


def make_pft_clients(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: PFTConfig,
    gen_cfg: GenerativeConfig,
    dp: DPConfig | None,
    seed: int,
    secret: bytes | None = None,
) -> list[PFTClient]:
    """One client per data set, seeded as the generative methods' (run seed, method, id);
    `secret`: a Flower site's key for secure noise (one client)."""
    seeds = [derive_seed(seed, method, GENERATIVE_CLIENT, c.id) for c in clients]
    return [
        PFTClient(method, c, n_classes, cfg, gen_cfg, dp, s, secret) for c, s in zip(clients, seeds)
    ]


def pft_outcome(
    method: str,
    dim: int,
    n_classes: int,
    cfg: PFTConfig,
    gen_cfg: GenerativeConfig,
    dp: DPConfig | None,
    history: list[dict],
    fidelity: list[dict[str, float]],
    privacy: list[dict],
    global_synthetic: dict | None,
    finished=None,
) -> Outcome:
    """What a FedPFT run reports (see generative_outcome): the numbers each client releases,
    and for dpfedpft the privacy block of its one release."""
    size = release_size(method, cfg, dim, n_classes)
    report = None
    if release_dp(method):
        report = privacy_report(dp_of(method, dp), privacy, ANALYTIC_GAUSSIAN, NOT_COVERED)
    params = {"shared": size, "total": size}
    return generative_outcome(
        params, gen_cfg, history, fidelity, report, global_synthetic, finished
    )


def run_pft(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: PFTConfig,
    gen_cfg: GenerativeConfig,
    dp: DPConfig | None,
    head_cfg: HeadConfig,
    seed: int,
) -> Outcome:
    """One round (each client releases, the server pools), then each client's
    `finish_client` from the pooled Gaussians."""
    pft_clients = make_pft_clients(method, clients, n_classes, cfg, gen_cfg, dp, seed)
    pooled, history = run_federation(
        pft_clients, {}, Rounds(1, pooler(method, cfg, dp), desc=method)
    )
    finished = finish_clients(pft_clients, clients, pooled, n_classes, gen_cfg, head_cfg, seed)
    sampler = PooledSampler(gen_cfg.squash_temperature)
    head = global_synthetic_head(sampler, pooled, n_classes, gen_cfg, head_cfg, seed)
    return pft_outcome(
        method,
        clients[0].x_train.shape[1],
        n_classes,
        cfg,
        gen_cfg,
        dp,
        history,
        [f.fidelity() for f in finished],
        [c.privacy() for c in pft_clients],
        pooled_synthetic_report(head, clients, n_classes),
        finished,
    )
