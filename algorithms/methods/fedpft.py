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

Sensitivity (add/remove one record; records clipped to norm sqrt(D)): the scaled vector
(n_c, s_c / sqrt(D), m_c / D) over all classes has L2 sensitivity sqrt(3) (sqrt(2) for
spherical, which needs no moment); every coordinate gets Gaussian noise of std sigma x
sensitivity, sigma calibrated once by the analytic Gaussian mechanism (calibrate_release) so that
this one release spends the target epsilon at delta. The derivation: docs/fedpft.md.

At the patient unit (`--privacy_unit patient`, or auto with patient ids) each record weighs
1 / (its patient's record count) in the counts, sums and moments (`patient_weights`): a
patient's parts then move the scaled vector by at most what one record does (its count parts
sum to 1 across classes; the others are convex combinations of clipped records' parts), so
the sensitivity and noise are the record-level ones and the noisy counts count patients.

Under `--secure_aggregation` the release is the same vector encoded with a Skellam share
(pft_secure.py): the coordinator decodes the sites' sum and fits the Gaussians from it.

Post-processing of the pooled sums (the noise is already in, so it costs no privacy): a class
whose pooled count is below max(1, MIN_COUNT_STDS x the std of the pooled count's noise) is
dropped from sampling (without noise: a class no client holds); the count is clipped to >= 1;
mean = sum / count; variances (diag, spherical) and covariance eigenvalues (full) are floored at
VARIANCE_FLOOR, which projects the covariance to positive definite.

What crosses the network, as float32: a client's release (once), and back the pooled mixture.
The statistics, fits, pooling and sampling, and the constants named here: gaussians.py.
"""

from __future__ import annotations

import numpy as np
import torch

from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, run_federation
from algorithms.methods.gaussians import (
    class_statistics,
    fit_mixtures,
    noisy_statistics,
    patient_weights,
    to_float32,
)
from algorithms.methods.generative import generative_outcome
from algorithms.methods.pft_config import (
    PFTConfig,
    dp_of,
    pft_method,
    release_dp,
    release_size,
    sensitivity,
)
from algorithms.methods.pft_server import PooledSampler, pft_plan, pooler, secure_release
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
from algorithms.privacy.config import DPConfig, privacy_unit
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.secure_aggregation import SecurePlan
from algorithms.privacy.secure_dpsgd import secure_privacy
from data.clients import ClientData
from utils.seeding import DP_NOISE, GENERATIVE_CLIENT, derive_seed, new_secret, private_generator


class PFTClient:
    """One site of fedpft or dpfedpft: releases its statistics once (`fit`), samples from the
    pooled Gaussians (`sample`). Its noise comes from one private generator, as a DP-CVAE
    client's (the DP_NOISE stream: of its client seed, or of its secret key under secure
    noise)."""

    # Privacy units its release supports: record, and patient (records weighted per patient)
    units = ("record", "patient")
    # dpfedpft's release has a secure form (pft_server.secure_release)
    secure = True

    def __init__(
        self,
        *,
        method: str,
        data: ClientData,
        n_classes: int,
        cfg: PFTConfig,
        gen_cfg: GenerativeConfig,
        dp: DPConfig | None,
        seed: int,
        secret: bytes | None = None,
        plan: SecurePlan | None = None,
    ):
        """A client of `data`; its release's noise calibrated (dpfedpft with DP on).

        Args:
            method: fedpft or dpfedpft.
            data: the client's data.
            n_classes: the number of classes.
            cfg: the mixtures' components and covariance.
            gen_cfg: the synthesis settings (squash temperature).
            dp: the DP settings (None: the method reads none).
            seed: the client seed.
            secret: the key of its secure noise (None: drawn here when the noise is secure).
            plan: the public plan of its secure release (None: a Gaussian release).
        """
        pft_method(method)
        self.plan = plan
        self.method, self.id, self.data, self.n_classes = method, data.id, data, n_classes
        self.cfg, self.temperature, self.dp, self.seed = cfg, gen_cfg.squash_temperature, dp, seed
        noised = release_dp(method) and dp is not None and dp.enabled
        self.noise_multiplier = calibrate_release(dp_of(method, dp)) if noised else None
        patients = data.patients_train
        has_ids = patients is not None
        self.unit = privacy_unit(dp, type(self), has_ids) if noised and dp else "record"
        # each training record's weight in the release (None: 1, the record unit)
        self.weights: np.ndarray | None = None
        if self.unit == "patient" and patients is not None:
            self.weights = patient_weights(patients)
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
        if self.plan is not None:
            stats = class_statistics(x, y, c, self.cfg.covariance, self.weights)
            self.released = True
            return secure_release(stats, self.plan, self.rng_noise, self.epsilon())
        if not release_dp(self.method):
            release = fit_mixtures(
                x=x,
                y=y,
                n_classes=c,
                components=self.cfg.components,
                covariance=self.cfg.covariance,
                seed=self.seed,
            )
        else:
            std = (self.noise_multiplier or 0.0) * sensitivity(self.cfg.covariance)
            release = noisy_statistics(
                x=x,
                y=y,
                n_classes=c,
                covariance=self.cfg.covariance,
                noise_std=std,
                rng=self.rng_noise,
                weights=self.weights,
            )
        self.released = True
        metrics = {"epsilon": self.epsilon()} if self.noise_multiplier else {}
        return ClientUpdate(to_float32(release), 0, metrics)

    def epsilon(self) -> float:
        """The epsilon spent so far: the release's, once it is made."""
        if not self.released:
            return 0.0
        if self.plan is not None:
            return secure_privacy(self.plan, 1, dp_of(self.method, self.dp).delta, None)["epsilon"]
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
        unit = {"unit": "patient"} if self.unit == "patient" else {}
        if self.plan is not None:
            delta = dp_of(self.method, self.dp).delta
            steps = 1 if self.released else 0
            line = secure_privacy(self.plan, steps, delta, None)
            return {"id": self.id, **unit, "noise_source": self.noise_source, **line}
        return {
            "id": self.id,
            **unit,
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
    *,
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: PFTConfig,
    gen_cfg: GenerativeConfig,
    dp: DPConfig | None,
    seed: int,
    secret: bytes | None = None,
    n_sites: int | None = None,
) -> list[PFTClient]:
    """One client per data set, seeded as the generative methods' (run seed, method, id);
    `secret`: a Flower site's key for secure noise (one client).

    Args:
        method: fedpft or dpfedpft.
        clients: every client's data.
        n_classes: the number of classes.
        cfg: the mixtures' components and covariance.
        gen_cfg: the synthesis settings (squash temperature).
        dp: the DP settings (None: the method reads none).
        seed: the run seed.
        secret: a Flower site's key for secure noise (None: each client draws its own).
        n_sites: the sites of the federation (None: `clients`, a simulation).
    """
    seeds = [derive_seed(seed, method, GENERATIVE_CLIENT, c.id) for c in clients]
    shape = (clients[0].x_train.shape[1], n_classes)
    plan = pft_plan(method, cfg, dp, shape, (n_sites or len(clients), seed))
    return [
        PFTClient(
            method=method,
            data=c,
            n_classes=n_classes,
            cfg=cfg,
            gen_cfg=gen_cfg,
            dp=dp,
            seed=s,
            secret=secret,
            plan=plan,
        )
        for c, s in zip(clients, seeds)
    ]


def pft_outcome(
    *,
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
    and for dpfedpft the privacy block of its one release.

    Args:
        method: fedpft or dpfedpft.
        dim: the embedding size.
        n_classes: the number of classes.
        cfg: the mixtures' components and covariance (what a release holds).
        gen_cfg: the synthesis settings.
        dp: the DP settings (dpfedpft's privacy block; None without).
        history: the per-round history.
        fidelity: the clients' fidelity numbers, in client order.
        privacy: the clients' privacy lines.
        global_synthetic: the global synthetic-only accuracy (None: not measured).
        finished: the clients' end-of-run results in this process (None: elsewhere).
    """
    size = release_size(method, cfg, dim, n_classes)
    report = None
    if release_dp(method):
        report = privacy_report(dp_of(method, dp), privacy, ANALYTIC_GAUSSIAN, NOT_COVERED)
    params = {"shared": size, "total": size}
    return generative_outcome(
        params=params,
        cfg=gen_cfg,
        history=history,
        fidelity=fidelity,
        privacy=report,
        global_synthetic=global_synthetic,
        finished=finished,
    )


def run_pft(
    *,
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
    `finish_client` from the pooled Gaussians.

    Args:
        method: fedpft or dpfedpft.
        clients: every client's data.
        n_classes: the number of classes.
        cfg: the mixtures' components and covariance.
        gen_cfg: the synthesis settings.
        dp: the DP settings (None: the method reads none).
        head_cfg: the heads' settings.
        seed: the run seed.
    """
    pft_clients = make_pft_clients(
        method=method,
        clients=clients,
        n_classes=n_classes,
        cfg=cfg,
        gen_cfg=gen_cfg,
        dp=dp,
        seed=seed,
    )
    shape = (clients[0].x_train.shape[1], n_classes)
    pool = pooler(method, cfg, dp, pft_clients[0].plan, shape)
    pooled, history = run_federation(pft_clients, {}, Rounds(1, pool, desc=method))
    finished = finish_clients(
        samplers=pft_clients,
        clients=clients,
        weights=pooled,
        n_classes=n_classes,
        cfg=gen_cfg,
        head_cfg=head_cfg,
        seed=seed,
    )
    sampler = PooledSampler(gen_cfg.squash_temperature)
    head = global_synthetic_head(
        sampler=sampler,
        weights=pooled,
        n_classes=n_classes,
        cfg=gen_cfg,
        head_cfg=head_cfg,
        seed=seed,
    )
    return pft_outcome(
        method=method,
        dim=clients[0].x_train.shape[1],
        n_classes=n_classes,
        cfg=cfg,
        gen_cfg=gen_cfg,
        dp=dp,
        history=history,
        fidelity=[f.fidelity() for f in finished],
        privacy=[c.privacy() for c in pft_clients],
        global_synthetic=pooled_synthetic_report(head, clients, n_classes),
        finished=finished,
    )
