"""FedPFT's flags (PFTConfig) and what a FedPFT method releases: whether it is dpfedpft's DP
statistics or fedpft's mixtures (`release_dp`), their size and their sensitivity. The method
itself: fedpft.py; the statistics: gaussians.py."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from algorithms.methods.gaussians import COVARIANCES, scale_shape
from algorithms.privacy.config import DPConfig
from utils.cli import flag, flag_name

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
