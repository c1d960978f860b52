"""FedPFT and DP-FedPFT (Beitollahi et al. 2024, arXiv 2402.01862): class-conditional Gaussians
sent once, in the same protocol as DP-CVAE (one round, then generative.py's end of run).

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
by the analytic Gaussian mechanism (algorithms/privacy.py), makes this one release spend the
target epsilon at delta. A full moment is symmetric: its upper triangle (L2 norm <= Frobenius) is
noised and mirrored. Spherical needs no moment: every record has ||x||^2 = D, so a class's total
second moment is D n_c, a function of its count, and its variance per dimension 1 - ||mean||^2 / D.

Post-processing of the pooled sums (the noise is already in, so it costs no privacy): a class
whose pooled count is below max(1, MIN_COUNT_STDS x the std of the pooled count's noise) is
dropped from sampling (without noise: a class no client holds); the count is clipped to >= 1;
mean = sum / count; variances (diag, spherical) and covariance eigenvalues (full) are floored at
VARIANCE_FLOOR, which projects the covariance to positive definite.

What crosses the network, as float32: a client's release (once), and back the pooled mixture
{"weights" (C, M), "means" (C, M, D), "scales"}: per component its standard deviations (diag:
(D,); spherical: (1,)) or a factor F with covariance F F^T (full: (D, D)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from algorithms.aggregation import StateDict
from algorithms.dp_client import GenerativeConfig
from algorithms.evaluation import Outcome
from algorithms.federation import ClientUpdate, run_federation
from algorithms.generative import finish_clients, generative_outcome
from algorithms.heads import HeadConfig
from algorithms.privacy import (
    ANALYTIC_GAUSSIAN,
    RELEASE_NOT_COVERED,
    DPConfig,
    calibrate_release,
    gaussian_noise,
    privacy_report,
    release_epsilon,
)
from data.clients import ClientData
from data.features import squash
from utils.seeding import DP_NOISE, GENERATIVE_CLIENT, PFT_FIT, derive_seed, generator

METHODS = ("fedpft", "dpfedpft")
COVARIANCES = ("diag", "full", "spherical")
# A class is sampled only if its pooled count is at least this many standard deviations of the
# pooled count's noise (and at least 1).
MIN_COUNT_STDS = 3.0
# Floor of a variance (diag, spherical) or covariance eigenvalue (full), in standardized units
# (every record has mean square 1 over its dimensions).
VARIANCE_FLOOR = 1e-3
# What scikit-learn adds to fedpft's fitted variances (its default), for numerical stability.
REG_COVAR = 1e-6


@dataclass(frozen=True)
class PFTConfig:
    """FedPFT's Gaussians: `components` per class (fedpft; dpfedpft releases one Gaussian per
    class) and their covariance type, as the Flower baseline offers them."""

    components: int = 1
    covariance: str = "diag"

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ValueError(f"--pft_components must be >= 1, got {self.components}")
        if self.covariance not in COVARIANCES:
            raise ValueError(
                f"--pft_covariance must be one of {COVARIANCES}, got {self.covariance!r}"
            )


# --- a client's release ------------------------------------------------------------------------


def sensitivity(covariance: str) -> float:
    """L2 sensitivity of dpfedpft's scaled release (count, sum / sqrt(D), moment / D) under
    add/remove-one: each part moves by at most 1 (module docstring); spherical has no moment."""
    return math.sqrt(2.0) if covariance == "spherical" else math.sqrt(3.0)


def clip_records(x: np.ndarray) -> np.ndarray:
    """Rows scaled down to L2 norm <= sqrt(D) (float64). Per-record standardized rows have norm
    sqrt(D) already (0 for a constant row): a guard that the sensitivity does not rest on."""
    x = np.asarray(x, dtype=np.float64)
    bound = math.sqrt(x.shape[1])
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, bound / np.maximum(norms, 1e-300))


def class_statistics(x: np.ndarray, y: np.ndarray, n_classes: int, covariance: str) -> StateDict:
    """Per class: record count, sum, and second moment (diag: (C, D); full: (C, D, D);
    spherical: none) of the clipped records, exactly (float64)."""
    x = clip_records(x)
    onehot = np.eye(n_classes)[np.asarray(y, dtype=np.int64)]
    stats = {"count": onehot.sum(0), "sum": onehot.T @ x}
    if covariance == "diag":
        stats["moment"] = onehot.T @ (x * x)
    elif covariance == "full":
        stats["moment"] = np.stack([x[y == c].T @ x[y == c] for c in range(n_classes)])
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in stats.items()}


def noisy_statistics(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    covariance: str,
    noise_std: float,
    rng: torch.Generator,
) -> StateDict:
    """dpfedpft's release (float64): `class_statistics` plus Gaussian noise of std `noise_std`
    on every coordinate of the scaled vector (count, sum / sqrt(D), moment / D), drawn in that
    order from `rng`; a full moment's noise is symmetric (upper triangle mirrored)."""
    stats = class_statistics(x, y, n_classes, covariance)
    scale = {"count": 1.0, "sum": math.sqrt(x.shape[1]), "moment": float(x.shape[1])}
    out = {}
    for name, value in stats.items():
        noise = gaussian_noise(tuple(value.shape), noise_std, rng)
        if value.dim() == 3:
            noise = noise.triu() + noise.triu(1).transpose(1, 2)
        out[name] = value + scale[name] * noise
    return out


def fit_mixtures(
    x: np.ndarray, y: np.ndarray, n_classes: int, cfg: PFTConfig, seed: int
) -> StateDict:
    """fedpft's release: per class, its count and a Gaussian mixture fitted by scikit-learn
    (REG_COVAR added to the variances), as weights (C, K), means (C, K, D) and scales. A class
    with fewer records than K gets as many components as records (one record: a Gaussian at it,
    of variance REG_COVAR); a class the client lacks, zero weights."""
    d, k = x.shape[1], cfg.components
    count = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights, means = np.zeros((n_classes, k)), np.zeros((n_classes, k, d))
    scales = np.zeros((n_classes, k, *scale_shape(cfg.covariance, d)))
    for c in np.flatnonzero(count):
        xc = np.asarray(x[y == c], dtype=np.float64)
        m = min(k, len(xc))
        if m == 1 and len(xc) == 1:  # scikit-learn needs two records: the Gaussian it would fit
            covariances = {"diag": np.full((1, d), REG_COVAR), "spherical": np.full(1, REG_COVAR)}
            weights[c, 0], means[c, 0] = 1.0, xc[0]
            covariances = covariances.get(cfg.covariance, REG_COVAR * np.eye(d)[None])
        else:
            gm = GaussianMixture(
                m,
                covariance_type=cfg.covariance,
                reg_covar=REG_COVAR,
                random_state=_seed32(seed, c),
            )
            gm.fit(xc)
            weights[c, :m], means[c, :m], covariances = gm.weights_, gm.means_, gm.covariances_
        scales[c, :m] = _scales(covariances, cfg.covariance, d)
    release = {"count": count, "weights": weights, "means": means, "scales": scales}
    return {key: torch.from_numpy(v) for key, v in release.items()}


def scale_shape(covariance: str, dim: int) -> tuple[int, ...]:
    """The shape of one component's scales."""
    return {"diag": (dim,), "spherical": (1,), "full": (dim, dim)}[covariance]


def _scales(covariances: np.ndarray, covariance: str, dim: int) -> np.ndarray:
    """Scikit-learn's covariances_ as standard deviations, or Cholesky factors (full)."""
    if covariance == "full":
        return np.linalg.cholesky(covariances)
    return np.sqrt(covariances).reshape(len(covariances), *scale_shape(covariance, dim))


def _seed32(seed: int, c: int) -> int:
    return derive_seed(seed, PFT_FIT, int(c)) % 2**32


def release_size(method: str, cfg: PFTConfig, dim: int, n_classes: int) -> int:
    """Numbers one client releases (once): the same for every client (fixed shapes)."""
    cov = math.prod(scale_shape(cfg.covariance, dim))
    if method == "fedpft":
        return n_classes * (1 + cfg.components * (1 + dim + cov))
    moment = {"diag": dim, "full": dim * dim, "spherical": 0}[cfg.covariance]
    return n_classes * (1 + dim + moment)


# --- the server: pooling -----------------------------------------------------------------------


def pool_mixtures(updates: Sequence[ClientUpdate]) -> StateDict:
    """fedpft's server step: per class, every client's components side by side, weighted by
    the client's count of the class times the component's weight (normalized per class)."""
    rel = [u.weights for u in updates]
    weights = torch.cat([r["count"].double()[:, None] * r["weights"].double() for r in rel], 1)
    total = weights.sum(1, keepdim=True)
    return _float32(
        {
            "weights": weights / total.clamp_min(1e-300),
            "means": torch.cat([r["means"].double() for r in rel], 1),
            "scales": torch.cat([r["scales"].double() for r in rel], 1),
        }
    )


def pool_statistics(
    updates: Sequence[ClientUpdate], covariance: str, noise_std: float
) -> StateDict:
    """dpfedpft's server step: sum the released statistics over clients, then post-process them
    into one Gaussian per class (module docstring). `noise_std`: each release's noise std."""
    rel = [u.weights for u in updates]
    count, total = (sum(r[k].double() for r in rel) for k in ("count", "sum"))
    dim = total.shape[1]
    keep = count >= max(1.0, MIN_COUNT_STDS * noise_std * math.sqrt(len(rel)))
    n = count.clamp_min(1.0)[:, None]
    mean = total / n
    if covariance == "spherical":
        var = (1.0 - (mean * mean).sum(1, keepdim=True) / dim).clamp_min(VARIANCE_FLOOR)
        scales = var.sqrt()
    elif covariance == "diag":
        moment = sum(r["moment"].double() for r in rel)
        scales = (moment / n - mean * mean).clamp_min(VARIANCE_FLOOR).sqrt()
    else:
        moment = sum(r["moment"].double() for r in rel)
        cov = moment / n[:, :, None] - mean[:, :, None] * mean[:, None, :]
        values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        scales = vectors * values.clamp_min(VARIANCE_FLOOR).sqrt()[:, None, :]
    return _float32(
        {"weights": keep.double()[:, None], "means": mean[:, None], "scales": scales[:, None]}
    )


def pooler(
    method: str, cfg: PFTConfig, dp: DPConfig | None
) -> Callable[[Sequence[ClientUpdate]], StateDict]:
    """The server's step of `method` (the `aggregate` of the one round)."""
    if method == "fedpft":
        return pool_mixtures
    noise_std = calibrate_release(dp) * sensitivity(cfg.covariance)
    return lambda updates: pool_statistics(updates, cfg.covariance, noise_std)


def _float32(state: StateDict) -> StateDict:
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


# --- sampling ----------------------------------------------------------------------------------


def sample_mixture(mixture: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
    """One draw per label from its class's pooled mixture (standardized space, float64): per
    class in label order, the components, then N(0, I) draws, from `rng`."""
    weights, means, scales = (mixture[k].double() for k in ("weights", "means", "scales"))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    out = torch.zeros(len(labels), means.shape[2], dtype=torch.float64)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        comp = torch.multinomial(weights[c], len(idx), replacement=True, generator=rng)
        z = torch.randn(len(idx), means.shape[2], generator=rng, dtype=torch.float64)
        for j in comp.unique().tolist():
            sel = comp == j
            s = scales[c, j]
            out[idx[sel]] = means[c, j] + (z[sel] @ s.T if s.dim() == 2 else z[sel] * s)
    return out.numpy()


class PFTClient:
    """One site of fedpft or dpfedpft: releases its statistics once (`fit`), samples from the
    pooled Gaussians (`sample`). Its noise comes from one generator, seeded as a DP-CVAE
    client's (the DP_NOISE stream of its client seed)."""

    def __init__(
        self,
        method: str,
        data: ClientData,
        n_classes: int,
        cfg: PFTConfig,
        gen_cfg: GenerativeConfig,
        dp: DPConfig | None,
        seed: int,
    ):
        if method not in METHODS:
            raise ValueError(f"{method!r} is not a FedPFT method ({', '.join(METHODS)})")
        self.method, self.id, self.data, self.n_classes = method, data.id, data, n_classes
        self.cfg, self.temperature, self.dp, self.seed = cfg, gen_cfg.squash_temperature, dp, seed
        private = method == "dpfedpft" and dp is not None and dp.enabled
        self.noise_multiplier = calibrate_release(dp) if private else None
        self.rng_noise = generator(derive_seed(seed, DP_NOISE))
        self.released = False

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """The one release (round 0 only, once: a second release would spend the budget
        again). Its sample count is 0: the server pools the released counts, and the true
        count does not leave the client."""
        if self.released or rnd != 0:
            raise RuntimeError(f"client {self.id}: {self.method} releases once, in round 1 only")
        x, y, c = self.data.x_train, self.data.y_train, self.n_classes
        if self.method == "fedpft":
            release = fit_mixtures(x, y, c, self.cfg, self.seed)
        else:
            std = (self.noise_multiplier or 0.0) * sensitivity(self.cfg.covariance)
            release = noisy_statistics(x, y, c, self.cfg.covariance, std, self.rng_noise)
        self.released = True
        metrics = {"epsilon": self.epsilon()} if self.noise_multiplier else {}
        return ClientUpdate(_float32(release), 0, metrics)

    def epsilon(self) -> float:
        """The epsilon spent so far: the release's, once it is made."""
        return release_epsilon(self.noise_multiplier, self.dp.delta) if self.released else 0.0

    def privacy(self) -> dict:
        """This client's line of the privacy report."""
        if self.noise_multiplier is None:
            return {"id": self.id, "epsilon": None}
        sens = sensitivity(self.cfg.covariance)
        return {
            "id": self.id,
            "mechanism": "gaussian, one release",
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": sens,
            "noise_std": self.noise_multiplier * sens,
            "epsilon": self.epsilon(),
        }

    def can_sample(self, weights: StateDict) -> np.ndarray:
        """Per class, whether the pooled mixture holds it (module docstring: dropped classes)."""
        return (weights["weights"].sum(1) > 0).numpy()

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """Synthetic embeddings in model space (squashed, as the other generative methods')."""
        return squash(sample_mixture(weights, labels, rng), self.temperature)

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
) -> list[PFTClient]:
    """One client per data set, seeded as the generative methods' (run seed, method, id)."""
    return [
        PFTClient(
            method,
            c,
            n_classes,
            cfg,
            gen_cfg,
            dp,
            derive_seed(seed, method, GENERATIVE_CLIENT, c.id),
        )
        for c in clients
    ]


def pft_outcome(
    method: str,
    dim: int,
    n_classes: int,
    cfg: PFTConfig,
    gen_cfg: GenerativeConfig,
    dp: DPConfig | None,
    history: list[dict],
    fidelity: list[tuple[float, dict[str, float]]],
    privacy: list[dict],
    finished=None,
) -> Outcome:
    """What a FedPFT run reports (see generative_outcome): the numbers each client releases,
    and for dpfedpft the privacy block of its one release."""
    size = release_size(method, cfg, dim, n_classes)
    report = None
    if method == "dpfedpft":
        report = privacy_report(dp, privacy, ANALYTIC_GAUSSIAN, RELEASE_NOT_COVERED)
    params = {"shared": size, "total": size}
    return generative_outcome(params, gen_cfg, history, fidelity, report, finished)


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
    pooled, history = run_federation(pft_clients, {}, 1, pooler(method, cfg, dp), desc=method)
    finished = finish_clients(pft_clients, clients, pooled, n_classes, gen_cfg, head_cfg, seed)
    return pft_outcome(
        method,
        clients[0].x_train.shape[1],
        n_classes,
        cfg,
        gen_cfg,
        dp,
        history,
        [(f.wasserstein, f.quality) for f in finished],
        [c.privacy() for c in pft_clients],
        finished,
    )
