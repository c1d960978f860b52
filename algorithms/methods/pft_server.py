"""What FedPFT's coordinator does with the sites' releases (`pooler`: fedpft's mixtures pooled,
dpfedpft's Gaussian releases summed, or their secure sum decoded) and sampling from the
result (`PooledSampler`); and dpfedpft's secure release.

dpfedpft under secure aggregation (`--secure_aggregation`): each site releases its scaled
statistics vector (count, sum / sqrt(D), moment / D over every class; L2 sensitivity
pft_config.sensitivity) once, encoded with its Skellam share (algorithms/privacy/
secure_aggregation.py); the coordinator decodes the sum of the shares, which is the pooled
statistics plus the whole accounted noise, and fits the Gaussians from it as from the sum of
Gaussian releases. One release: steps 1, nothing else composed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from algorithms.methods.gaussians import (
    from_scaled_vector,
    gaussians_from_sums,
    pool_mixtures,
    pool_statistics,
    sample_mixture,
    scaled_vector,
)
from algorithms.methods.pft_config import PFTConfig, dp_of, release_dp, release_size, sensitivity
from algorithms.privacy.accounting import calibrate_release
from algorithms.privacy.config import DPConfig
from algorithms.privacy.secure_aggregation import (
    SecurePlan,
    decode_sum,
    encode_share,
    plan_secure_sum,
    rotation_seed,
    split_parts,
    sum_shares,
)
from algorithms.privacy.secure_dpsgd import RESIDUES, secure_update, update_step
from data.features import squash


def pft_plan(
    method: str, cfg: PFTConfig, dp: DPConfig | None, shape: tuple[int, int], sites: tuple[int, int]
) -> SecurePlan | None:
    """The public plan of dpfedpft's secure release (None without --secure_aggregation);
    `shape`: (embedding size, classes); `sites`: (sites in the sum, run seed)."""
    if dp is None or not (dp.enabled and dp.secure_aggregation):
        return None
    dim, n_classes = shape
    return plan_secure_sum(
        dims=(release_size(method, cfg, dim, n_classes),),
        sensitivity=sensitivity(cfg.covariance),
        n_sites=sites[0],
        min_honest=dp.min_honest_sites,
        epsilon=dp.epsilon,
        delta=dp.delta,
        steps=1,
        seed=sites[1],
    )


def secure_release(
    stats: StateDict, plan: SecurePlan, generator: torch.Generator, epsilon: float
) -> ClientUpdate:
    """A site's one release: its exact statistics' scaled vector as residues with its share."""
    part = split_parts(scaled_vector(stats), plan)[0]
    residues = encode_share(part, plan, rotation_seed(plan, 0, 0), generator)
    return ClientUpdate(secure_update(residues, 0), 0, {"epsilon": epsilon})


def secure_pooler(
    plan: SecurePlan, cfg: PFTConfig, shape: tuple[int, int]
) -> Callable[[Sequence[ClientUpdate]], StateDict]:
    """The coordinator's step: decode the sum of the sites' residues into the pooled noisy
    statistics and fit one Gaussian per class (the count threshold from the sum's noise: the
    shares of every site in the sum, plus the rounding's variance of 1/4 per site)."""

    def pool(updates: Sequence[ClientUpdate]) -> StateDict:
        if any(update_step(u) != 0 for u in updates):
            raise ValueError("dpfedpft releases once: an update of another release")
        total = sum_shares([u.weights[RESIDUES] for u in updates], plan)
        return pool_total(total, len(updates), plan, cfg, shape)

    return pool


def pool_total(
    total: torch.Tensor, n_sites: int, plan: SecurePlan, cfg: PFTConfig, shape: tuple[int, int]
) -> StateDict:
    """The pooled Gaussians from the modular sum of `n_sites` sites' residues (the simulation's
    `sum_shares`, or SecAgg+'s unmasked sum under Flower); refused for fewer than m sites."""
    if n_sites < plan.min_honest:
        raise ValueError(f"a secure sum of {n_sites} sites: the plan needs {plan.min_honest}")
    dim, n_classes = shape
    vector = decode_sum(total, plan, rotation_seed(plan, 0, 0))
    sums = from_scaled_vector(vector, n_classes, dim, cfg.covariance)
    std = plan.gamma * math.sqrt(n_sites * (plan.share_variance + 0.25))
    return gaussians_from_sums(sums, cfg.covariance, std)


def pooler(
    method: str,
    cfg: PFTConfig,
    dp: DPConfig | None,
    plan: SecurePlan | None = None,
    shape: tuple[int, int] = (0, 0),
) -> Callable[[Sequence[ClientUpdate]], StateDict]:
    """The server's step of `method` (the `aggregate` of the one round); with a secure `plan`,
    the decoding of the sites' sum (`shape`: embedding size, classes)."""
    if plan is not None:
        return secure_pooler(plan, cfg, shape)
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
