"""Noise shares under secure aggregation (distributed DP, `--secure_aggregation`): each site
encodes its vector to integers with the Skellam mechanism's steps (algorithms/privacy/skellam.py)
and adds a share of the noise, sized so that the sum over any `min_honest` sites carries the
whole accounted noise; the coordinator sees only the sum modulo 2^BITS (in a simulation: the
modular sum of the shares; under Flower: SecAgg+'s unmasked sum, the same integers).

One plan (`plan_secure_sum`) fixes every public parameter from public facts (the method's
sensitivity, the vector's length, the number of sites, m, the steps and the target): the grid
step gamma, the total variance, the modulus. Per release a site:

    x = clip_l2(vector, UNITS_PER_SITE x sensitivity)      # the whole site vector, real scale
    z = floor(rotate(x, seed) / gamma + U)                  # randomized rounding, U ~ U[0, 1)
    residues = (z + skellam_share(variance / m)) mod 2^BITS

Sensitivity after rounding: a unit (record or patient) moves x by at most `sensitivity` in L2
(the clip of the whole vector is 1-Lipschitz); coupled on the same U, floor(a + U) and
floor(b + U) differ by less than |a - b| + 1 per coordinate, so the integer vectors differ by
at most sensitivity / gamma + sqrt(d) in L2 (d: the padded length) and, being integers, by at
most min(sqrt(d) L2, L2^2) in L1. Renyi divergence is quasi-convex in the coupled pair, so the
Skellam RDP of these sensitivities bounds the mechanism (skellam.skellam_rdp).

The two guarantees: `epsilon` when at least m honest sites are in every sum (their shares add
to the whole variance), `epsilon_collusion` against a coordinator colluding with every other
site (this site's share alone, variance / m). With m = 1 both are the same: today's guarantee.

Parts that never leave the site (a DP-CVAE encoder) are encoded the same way with the whole
variance added locally (`noisy_local`), so the site's joint update is one Skellam mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from algorithms.privacy.config import DPConfig
from algorithms.privacy.skellam import (
    Guarantees,
    bits_needed,
    calibrate_variance,
    clip_l2,
    decode,
    from_modular,
    guarantees,
    modular_sum,
    padded_dim,
    rotate,
    skellam_share,
    to_modular,
)
from utils.cli import flag_name
from utils.seeding import SECURE_ROTATION, derive_seed

# Each site's residues and the sum live modulo 2^BITS: SecAgg+ carries 30-bit integers exactly
# (its int32 quantizer; docs/privacy.md), and the simulation sums modulo the same.
BITS = 30
# A site's vector is clipped to this many units' sensitivity before rounding (public, so the
# grid step does not depend on a record count); a site whose vector is longer is scaled down
# (its statistics keep their ratios; only its weight in the sum shrinks).
UNITS_PER_SITE = 8192
# The probability allowed for a sum to wrap around the modulus (the noise's tail).
WRAP_FAILURE = 1e-9


# The accountant of noise shares under secure aggregation (algorithms/privacy/skellam.py).
SKELLAM_RDP = "skellam-rdp"
SECURE_TRUST = (
    "secure aggregation: `epsilon` assumes that every sum holds the shares of at least "
    "min_honest_sites honest sites and that the protocol runs as specified (the coordinator "
    "sees only the sum); a coordinator colluding with every other site faces only this "
    "site's share: `epsilon_collusion`. Under Flower, SecAgg+'s masks come from a Mersenne "
    "Twister seeded with 32 bits (flwr 1.42), so the masking is not cryptographically secure"
)


def secure_block(lines: list[dict]) -> dict:
    """The privacy block's summary of secure aggregation: m, and the largest epsilon against
    a coordinator colluding with every other site (both computed by each site)."""
    return {
        "min_honest_sites": min(c["min_honest_sites"] for c in lines),
        "epsilon_collusion_max": max(c["epsilon_collusion"] for c in lines),
        "bits": lines[0]["bits"],
        "trust": SECURE_TRUST,
    }


@dataclass(frozen=True)
class SecurePlan:
    """The public parameters of a site's secure releases, the same at every site and at the
    coordinator. `dims`: the lengths of the vector's parts, each rotated on its own (part 0 is
    summed across sites; later parts stay local); `variance`: the total Skellam variance that m
    honest sites' shares carry (grid units)."""

    dims: tuple[int, ...]
    sensitivity: float
    n_sites: int
    min_honest: int
    steps: int
    gamma: float
    variance: float
    seed: int = 0  # public: the rotations' seeds derive from it (`rotation_seed`)
    bits: int = BITS

    @property
    def padded(self) -> int:
        """The total padded length (every part)."""
        return sum(padded_dim(d) for d in self.dims)

    @property
    def l2(self) -> float:
        """The L2 sensitivity of a unit on the integer grid (module docstring)."""
        return self.sensitivity / self.gamma + math.sqrt(self.padded)

    @property
    def l1(self) -> float:
        """The L1 sensitivity on the integer grid (integers: at most L2^2)."""
        return self.l2 * min(math.sqrt(self.padded), self.l2)

    @property
    def share_variance(self) -> float:
        """The variance of one site's share (of the summed part)."""
        return self.variance / self.min_honest

    @property
    def norm_cap(self) -> float:
        """What a site's vector is clipped to (real scale)."""
        return UNITS_PER_SITE * self.sensitivity

    def guarantees(self, delta: float, extra: np.ndarray | None = None) -> Guarantees:
        """Both epsilons at `delta` over the plan's steps, composed with `extra` (RDP curve)."""
        return guarantees(
            variance=self.variance,
            min_honest=self.min_honest,
            l1=self.l1,
            l2=self.l2,
            steps=self.steps,
            delta=delta,
            extra=extra,
        )


def plan_secure_sum(
    *,
    dims: Sequence[int],
    sensitivity: float,
    n_sites: int,
    min_honest: int,
    epsilon: float,
    delta: float,
    steps: int,
    seed: int,
    extra: np.ndarray | None = None,
) -> SecurePlan:
    """The finest grid whose sums cannot wrap modulo 2^BITS (but with WRAP_FAILURE) and the
    variance that spends `epsilon` at `delta` over `steps` releases: a bisection on gamma (the
    variance scales with the grid, so the bits needed fall as gamma grows).

    Args:
        dims: the lengths of the vector's parts (part 0 summed, the others local).
        sensitivity: a unit's L2 sensitivity on the whole vector (real scale).
        n_sites: the sites in a sum.
        min_honest: m, the sites whose shares each sum is guaranteed to hold.
        epsilon: the target epsilon (the m-honest one).
        delta: the target delta.
        steps: the releases composed (full-batch: q = 1).
        seed: the public seed of the rotations (the run seed).
        extra: the RDP curve of the run's other releases (the noisy count's; None: none).
    """
    if not 1 <= min_honest <= n_sites:
        raise ValueError(
            f"{flag_name(DPConfig, 'min_honest_sites')} {min_honest}: must be between 1 and "
            f"the {n_sites} sites of a sum"
        )
    dims = tuple(int(d) for d in dims)
    padded = sum(padded_dim(d) for d in dims)
    summed = padded_dim(dims[0])

    def calibrated(l2: float) -> float:
        l1 = l2 * min(math.sqrt(padded), l2)
        return calibrate_variance(
            epsilon=epsilon, delta=delta, steps=steps, l1=l1, l2=l2, rtol=1e-9, extra=extra
        )

    # the variance is (nearly) proportional to L2^2: calibrate once, scale while searching
    ratio = calibrated(1e6) / 1e12

    def bits(gamma: float, variance: float) -> int:
        norm = UNITS_PER_SITE * sensitivity / gamma + math.sqrt(summed)
        return bits_needed(n_sites, norm, variance / min_honest, summed, WRAP_FAILURE)

    def l2(gamma: float) -> float:
        return sensitivity / gamma + math.sqrt(padded)

    low, high = sensitivity * 1e-12, sensitivity * 1e6  # too fine, coarse enough
    while high / low > 1 + 1e-6:
        mid = math.sqrt(low * high)
        if bits(mid, ratio * l2(mid) ** 2) > BITS:
            low = mid
        else:
            high = mid
    gamma = high
    variance = calibrated(l2(gamma))
    while bits(gamma, variance) > BITS:  # the exact variance may sit a little above the scaled
        gamma *= 1.001
        variance = calibrated(l2(gamma))
    return SecurePlan(dims, sensitivity, n_sites, min_honest, steps, gamma, variance, seed)


def rotation_seed(plan: SecurePlan, step: int, part: int) -> int:
    """The public seed of the rotation of `part` at release `step` (every site the same)."""
    return derive_seed(plan.seed, SECURE_ROTATION, step, part)


def randomized_round(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """floor(x + U) per coordinate, U ~ U[0, 1) from `generator`: unbiased, and within |a - b|
    + 1 of the rounding of b on the same U (the sensitivity of the module docstring). int64."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return torch.floor(x.to(torch.float64) + u).to(torch.int64)


def _grid(x: torch.Tensor, plan: SecurePlan, seed: int, generator: torch.Generator) -> torch.Tensor:
    """A part on the integer grid: rotated with the public `seed`, scaled, rounded."""
    return randomized_round(rotate(x.to(torch.float64), seed) / plan.gamma, generator)


def split_parts(x: torch.Tensor, plan: SecurePlan) -> list[torch.Tensor]:
    """A site's whole vector (every part, flat) clipped to the plan's cap, cut into parts."""
    if len(x) != sum(plan.dims):
        raise ValueError(f"a secure release of length {len(x)}: the plan's is {sum(plan.dims)}")
    return list(clip_l2(x.flatten(), plan.norm_cap).split(list(plan.dims)))


def encode_share(
    part: torch.Tensor, plan: SecurePlan, seed: int, generator: torch.Generator
) -> torch.Tensor:
    """The summed part of a site's release as residues modulo 2^bits (int64): on the grid plus
    the site's Skellam share (variance / m), from the site's private `generator`; `seed`: the
    release's public rotation seed."""
    z = _grid(part, plan, seed, generator)
    return to_modular(z + skellam_share(len(z), plan.share_variance, 1, generator), plan.bits)


def noisy_local(
    part: torch.Tensor, plan: SecurePlan, seed: int, generator: torch.Generator
) -> torch.Tensor:
    """A part that stays on the site, on the grid with the whole variance added and decoded
    back (float64, real scale): the same mechanism as the summed part with m = 1."""
    z = _grid(part, plan, seed, generator)
    noisy = z + skellam_share(len(z), plan.variance, 1, generator)
    return decode(noisy, plan.gamma, len(part), seed)


def sum_shares(residues: Sequence[torch.Tensor], plan: SecurePlan) -> torch.Tensor:
    """What secure aggregation reveals of the sites' residues: their sum modulo 2^bits."""
    if len(residues) < plan.min_honest:
        raise ValueError(
            f"a secure sum of {len(residues)} sites: the plan needs at least {plan.min_honest}"
        )
    return modular_sum(list(residues), plan.bits)


def decode_sum(total: torch.Tensor, plan: SecurePlan, seed: int) -> torch.Tensor:
    """The sites' summed vector (part 0, real scale, float64) from the modular sum."""
    return decode(from_modular(total, plan.bits), plan.gamma, plan.dims[0], seed)
