"""Class-conditional Gaussians on per-record standardized embeddings, FedPFT's building blocks
(algorithms/methods/fedpft.py tells the method and its privacy): per-class statistics, exact or with
Gaussian noise; scikit-learn mixture fits; pooling into one mixture per class; sampling.

A mixture is a dict of tensors: "weights" (C, M) (a class whose row is zero cannot be sampled),
"means" (C, M, D) and "scales": per component its standard deviations (diag: (D,); spherical:
(1,)) or a factor F with covariance F F^T (full: (D, D)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from algorithms.federation.aggregation import StateDict
from algorithms.privacy.noise import release_noise
from utils.seeding import PFT_FIT, derive_seed

COVARIANCES = ("diag", "full", "spherical")
# A class is sampled only if its pooled count is at least this many standard deviations of the
# pooled count's noise (and at least 1).
MIN_COUNT_STDS = 3.0
# Floor of a variance (diag, spherical) or covariance eigenvalue (full), in standardized units
# (every record has mean square 1 over its dimensions).
VARIANCE_FLOOR = 1e-3
# What scikit-learn adds to fedpft's fitted variances (its default), for numerical stability.
REG_COVAR = 1e-6


def clip_records(x: np.ndarray) -> np.ndarray:
    """Rows scaled down to L2 norm <= sqrt(D) (float64). Per-record standardized rows have norm
    sqrt(D) already (0 for a constant row): a guard that the sensitivity does not rest on."""
    x = np.asarray(x, dtype=np.float64)
    bound = math.sqrt(x.shape[1])
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, bound / np.maximum(norms, 1e-300))


def patient_weights(patients: np.ndarray) -> np.ndarray:
    """Each record's weight at the patient unit: 1 / (its patient's record count), so that every
    patient's weights sum to 1 whatever its number of records or classes (fedpft.py: why the
    release's sensitivity is then per patient)."""
    _, index, counts = np.unique(np.asarray(patients), return_inverse=True, return_counts=True)
    return 1.0 / counts[index].astype(np.float64)


def class_statistics(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    covariance: str,
    weights: np.ndarray | None = None,
) -> StateDict:
    """Per class: record count, sum, and second moment (diag: (C, D); full: (C, D, D);
    spherical: none) of the clipped records, exactly (float64); with `weights` (one per record:
    `patient_weights`), the weighted count, sum and moment."""
    x = clip_records(x)
    y = np.asarray(y, dtype=np.int64)
    onehot = np.eye(n_classes)[y]
    if weights is not None:
        onehot = onehot * np.asarray(weights, dtype=np.float64)[:, None]
    stats = {"count": onehot.sum(0), "sum": onehot.T @ x}
    if covariance == "diag":
        stats["moment"] = onehot.T @ (x * x)
    elif covariance == "full":
        stats["moment"] = np.stack(
            [(onehot[y == c, c, None] * x[y == c]).T @ x[y == c] for c in range(n_classes)]
        )
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in stats.items()}


def noisy_statistics(
    *,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    covariance: str,
    noise_std: float,
    rng: torch.Generator,
    weights: np.ndarray | None = None,
) -> StateDict:
    """dpfedpft's release (float64): `class_statistics` plus Gaussian noise of std `noise_std`
    on every coordinate of the scaled vector (count, sum / sqrt(D), moment / D), drawn in that
    order from `rng`; a full moment's noise is symmetric (upper triangle mirrored).

    Args:
        x: the client's training embeddings (N, D).
        y: their labels.
        n_classes: the number of classes.
        covariance: diag, full or spherical (which moment is released).
        noise_std: the noise's standard deviation on each coordinate.
        rng: the client's private noise generator.
        weights: each record's weight (None: 1; the patient unit: `patient_weights`).
    """
    stats = class_statistics(x, y, n_classes, covariance, weights)
    scale = {"count": 1.0, "sum": math.sqrt(x.shape[1]), "moment": float(x.shape[1])}
    out = {}
    for name, value in stats.items():
        noise = release_noise(tuple(value.shape), noise_std, rng)
        if value.dim() == 3:
            noise = noise.triu() + noise.triu(1).transpose(1, 2)
        out[name] = value + scale[name] * noise
    return out


def fit_mixtures(
    *, x: np.ndarray, y: np.ndarray, n_classes: int, components: int, covariance: str, seed: int
) -> StateDict:
    """fedpft's release: per class, its count and a Gaussian mixture fitted by scikit-learn
    (REG_COVAR added to the variances), as weights (C, K), means (C, K, D) and scales. A class
    with fewer records than K gets as many components as records (one record: a Gaussian at it,
    of variance REG_COVAR); a class the client lacks, zero weights.

    Args:
        x: the client's training embeddings (N, D).
        y: their labels.
        n_classes: the number of classes.
        components: the mixture components per class (K).
        covariance: diag, full or spherical.
        seed: scikit-learn's random state (per class).
    """
    # imported here: every Flower message starts a process that imports the apps' modules
    from sklearn.mixture import GaussianMixture

    d, k = x.shape[1], components
    count = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights, means = np.zeros((n_classes, k)), np.zeros((n_classes, k, d))
    scales = np.zeros((n_classes, k, *scale_shape(covariance, d)))
    for c in np.flatnonzero(count):
        xc = np.asarray(x[y == c], dtype=np.float64)
        m = min(k, len(xc))
        covariances: np.ndarray
        if m == 1 and len(xc) == 1:  # scikit-learn needs two records: the Gaussian it would fit
            one = {"diag": np.full((1, d), REG_COVAR), "spherical": np.full(1, REG_COVAR)}
            weights[c, 0], means[c, 0] = 1.0, xc[0]
            covariances = one.get(covariance, REG_COVAR * np.eye(d)[None])
        else:
            gm = GaussianMixture(
                m,
                covariance_type=covariance,
                reg_covar=REG_COVAR,
                random_state=_seed32(seed, int(c)),
            )
            gm.fit(xc)
            weights[c, :m], means[c, :m], covariances = gm.weights_, gm.means_, gm.covariances_
        scales[c, :m] = _scales(covariances, covariance, d)
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
    """scikit-learn's random_state of class c's fit (client seed `seed`)."""
    return derive_seed(seed, PFT_FIT, int(c)) % 2**32


def pool_mixtures(releases: Sequence[StateDict]) -> StateDict:
    """fedpft's server step: per class, every client's components side by side, weighted by
    the client's count of the class times the component's weight (normalized per class)."""
    weights = torch.cat([r["count"].double()[:, None] * r["weights"].double() for r in releases], 1)
    total = weights.sum(1, keepdim=True)
    return to_float32(
        {
            "weights": weights / total.clamp_min(1e-300),
            "means": torch.cat([r["means"].double() for r in releases], 1),
            "scales": torch.cat([r["scales"].double() for r in releases], 1),
        }
    )


def _summed(releases: Sequence[StateDict], key: str) -> torch.Tensor:
    """One released statistic summed over the clients in their order, in float64."""
    total = releases[0][key].double()
    for r in releases[1:]:
        total = total + r[key].double()
    return total


def pool_statistics(releases: Sequence[StateDict], covariance: str, noise_std: float) -> StateDict:
    """dpfedpft's server step: sum the released statistics over clients, then post-process them
    into one Gaussian per class (fedpft.py says how). `noise_std`: the std of each
    release's noise on its count."""
    sums = {k: _summed(releases, k) for k in releases[0]}
    return gaussians_from_sums(sums, covariance, noise_std * math.sqrt(len(releases)))


def gaussians_from_sums(sums: StateDict, covariance: str, count_std: float) -> StateDict:
    """One Gaussian per class from the pooled noisy statistics (count, sum, moment; float64):
    `count_std` is the std of the pooled count's noise (fedpft.py: the post-processing)."""
    count, total = sums["count"].double(), sums["sum"].double()
    dim = total.shape[1]
    keep = count >= max(1.0, MIN_COUNT_STDS * count_std)
    n = count.clamp_min(1.0)[:, None]
    mean = total / n
    if covariance == "spherical":
        var = (1.0 - (mean * mean).sum(1, keepdim=True) / dim).clamp_min(VARIANCE_FLOOR)
        scales = var.sqrt()
    elif covariance == "diag":
        moment = sums["moment"].double()
        scales = (moment / n - mean * mean).clamp_min(VARIANCE_FLOOR).sqrt()
    else:
        moment = sums["moment"].double()
        cov = moment / n[:, :, None] - mean[:, :, None] * mean[:, None, :]
        values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        scales = vectors * values.clamp_min(VARIANCE_FLOOR).sqrt()[:, None, :]
    return to_float32(
        {"weights": keep.double()[:, None], "means": mean[:, None], "scales": scales[:, None]}
    )


def scaled_vector(stats: StateDict) -> torch.Tensor:
    """The statistics as one vector in the release's scale (count, sum / sqrt(D), moment / D),
    whose L2 sensitivity is pft_config.sensitivity: what a secure release encodes."""
    dim = stats["sum"].shape[1]
    scale = {"count": 1.0, "sum": math.sqrt(dim), "moment": float(dim)}
    return torch.cat([(v.double() / scale[k]).flatten() for k, v in stats.items()])


def from_scaled_vector(
    vector: torch.Tensor, n_classes: int, dim: int, covariance: str
) -> StateDict:
    """`scaled_vector`'s inverse: the statistics (float64) from their scaled vector."""
    shapes = {"count": (n_classes,), "sum": (n_classes, dim)}
    if covariance == "diag":
        shapes["moment"] = (n_classes, dim)
    elif covariance == "full":
        shapes["moment"] = (n_classes, dim, dim)
    scale = {"count": 1.0, "sum": math.sqrt(dim), "moment": float(dim)}
    parts = vector.double().split([math.prod(s) for s in shapes.values()])
    return {k: p.view(shapes[k]) * scale[k] for k, p in zip(shapes, parts)}


def to_float32(state: StateDict) -> StateDict:
    """The tensors as they cross the network: float32."""
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


def sample_mixture(mixture: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
    """One draw per label from its class's pooled mixture (standardized space, float64): per
    class in label order, the components, then N(0, I) draws, from `rng`."""
    weights, means, scales = (mixture[k].double() for k in ("weights", "means", "scales"))
    by_label = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    out = torch.zeros(len(by_label), means.shape[2], dtype=torch.float64)
    for c in by_label.unique().tolist():
        idx = torch.nonzero(by_label == c).flatten()
        comp = torch.multinomial(weights[c], len(idx), replacement=True, generator=rng)
        z = torch.randn(len(idx), means.shape[2], generator=rng, dtype=torch.float64)
        for j in comp.unique().tolist():
            sel = comp == j
            s = scales[c, j]
            out[idx[sel]] = means[c, j] + (z[sel] @ s.T if s.dim() == 2 else z[sel] * s)
    return out.numpy()
