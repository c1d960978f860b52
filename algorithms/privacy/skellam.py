"""The Skellam mechanism for secure aggregation (Agarwal, Kairouz, Liu, NeurIPS 2021): each site
clips, rotates, scales and rounds its vector to integers and adds its share of Skellam noise; the
coordinator sees only the sum modulo 2^bits, decodes it, and the sum carries the whole noise.
Plain functions, not yet wired to the CLI (issue 31).

One round, with n sites of which at least m are honest (add their share):

    x = clip_l2(update, clip)                         # each site, float64
    z = conditional_round(rotate(x, seed) / gamma, bound, rng)   # integers, |z| <= bound
    y = to_modular(z + skellam_share(len(z), variance, m, rng), bits)
    total = modular_sum([y_1, ..., y_n], bits)        # secure aggregation
    mean = decode(total, gamma, len(update), seed) / n

with `bound = rounded_l2_bound(clip / gamma, beta, d)` for d = padded_dim(len(update)) (the
rotated length), `variance` from `calibrate_variance` (the sensitivities from
`rounded_sensitivities(clip / gamma, beta, d)`), `check_no_wrap` before the first round, and the
two epsilons of `guarantees`. The accountant is the closed-form Skellam RDP (`skellam_rdp`),
converted to (epsilon, delta) with Opacus's RDP conversion (Balle et al. 2020).

How the methods would call it (a sketch, not implemented):
- One-step DP-CVAE (`--preset dp`: each round one full-batch step, q = 1): the site's update is
  its clipped-gradient sum of the decoder's parameters, flattened; it is encoded as above with
  the rotation seed derived from the run seed and the round (public), the noise share from the
  site's private DP-noise stream; the coordinator decodes the sum, divides by the noisy total
  count and takes the optimizer step on the global decoder. The encoder, never aggregated, keeps
  its full Gaussian noise. The steps composed are the rounds. A record's removal changes the
  site's sum by at most `clip`, but the sum is rounded as a whole: its sensitivity needs the
  rounding coupled on neighbouring sums (`clip / gamma + sqrt(dim)` in L2 for unconditional
  rounding), not `rounded_sensitivities`, which bounds a whole clipped vector (site level).
- DP-FedPFT: one release (steps = 1) of each site's per-class sums (count, sum, sum of squares,
  clipped), concatenated into one vector and encoded once; the coordinator's decoded sums are
  the pooled statistics from which it fits the Gaussians.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from utils.seeding import generator as seeded_generator

# Integer RDP orders (the closed form is stated for them), as in the reference accounting.
RDP_ORDERS = (*range(2, 257), 512, 1024)
# Conditional rounding gives up after this many draws (each is within the bound with
# probability at least 1 - beta).
MAX_ROUNDING_TRIES = 1000


# ---------------------------------------------------------------- encoding


def clip_l2(x: torch.Tensor, norm: float) -> torch.Tensor:
    """`x` scaled down to L2 norm `norm` when longer (unchanged otherwise), in float64."""
    x = x.to(torch.float64)
    length = float(torch.linalg.vector_norm(x))
    return x * (norm / length) if length > norm else x.clone()


def padded_dim(dim: int) -> int:
    """The smallest power of 2 >= dim (the Hadamard transform's length)."""
    if dim < 1:
        raise ValueError(f"a vector of dimension {dim}: needs at least 1")
    return 1 << (dim - 1).bit_length()


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of a vector of power-of-2 length (its own
    inverse): log2(len) butterfly passes, divided by sqrt(len)."""
    n = len(x)
    if n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-2 length, not {n}")
    y = x.clone()
    half = 1
    while half < n:
        pairs = y.view(-1, 2, half)
        y = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1).view(-1)
        half *= 2
    return y / math.sqrt(n)


def rotation_signs(dim: int, seed: int) -> torch.Tensor:
    """The random signs (+-1, float64) of the rotation of a `dim`-vector: drawn from the
    public `seed` (the coordinator and every site use the same)."""
    bits = torch.randint(0, 2, (padded_dim(dim),), generator=seeded_generator(seed))
    return bits.to(torch.float64).mul_(2).sub_(1)


def rotate(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The randomized Hadamard rotation H D x / sqrt(d) of `x` zero-padded to a power of 2
    (D: the signs of `seed`): an orthogonal map, so the L2 norm is kept, and it spreads the
    vector evenly over the coordinates (each about norm / sqrt(d)) before rounding."""
    signs = rotation_signs(len(x), seed)
    padded = torch.zeros(len(signs), dtype=torch.float64)
    padded[: len(x)] = x
    return hadamard(padded * signs)


def unrotate(y: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """The inverse of `rotate` (D H y, the padding dropped): a vector of length `dim`."""
    signs = rotation_signs(dim, seed)
    if len(y) != len(signs):
        raise ValueError(f"a rotated vector of length {len(y)}: expected {len(signs)}")
    return (hadamard(y.to(torch.float64)) * signs)[:dim]


def rounded_l2_bound(norm: float, beta: float, dim: int) -> float:
    """The L2 norm bound after conditional randomized rounding of a `dim`-vector of L2 norm at
    most `norm` (already scaled to the integer grid): norm + sqrt(dim) always holds; with
    beta > 0 the tighter sqrt(norm^2 + dim / 4 + sqrt(2 ln(1 / beta)) (norm + sqrt(dim) / 2))
    holds with probability >= 1 - beta per draw (Kairouz, Liu, Steinke 2021, Theorem 1), and
    `conditional_round` redraws until it does."""
    if not (dim >= 1 and norm > 0 and 0 <= beta < 1):
        raise ValueError(
            f"rounded_l2_bound needs dim >= 1, norm > 0, 0 <= beta < 1: {dim, norm, beta}"
        )
    loose = norm + math.sqrt(dim)
    if beta == 0:
        return loose
    tight = norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    return min(loose, math.sqrt(tight))


def conditional_round(x: torch.Tensor, bound: float, generator: torch.Generator) -> torch.Tensor:
    """Randomized rounding of each coordinate to floor(x) or floor(x) + 1 (up with probability
    the fractional part: unbiased), drawn again until the L2 norm of the integers is <= `bound`
    (int64). Refuses after MAX_ROUNDING_TRIES draws (a bound below what rounding can reach)."""
    x = x.to(torch.float64)
    low = torch.floor(x)
    frac = x - low
    for _ in range(MAX_ROUNDING_TRIES):
        up = torch.rand(len(x), generator=generator, dtype=torch.float64) < frac
        z = (low + up).to(torch.int64)
        if float(torch.linalg.vector_norm(z.to(torch.float64))) <= bound:
            return z
    raise ValueError(
        f"conditional rounding: no draw within the norm bound {bound:.6g} in "
        f"{MAX_ROUNDING_TRIES} tries (is the vector clipped and scaled as the bound assumes?)"
    )


def decode(total: torch.Tensor, gamma: float, dim: int, seed: int) -> torch.Tensor:
    """The sum of the sites' vectors from the decoded integer sum (signed, see `from_modular`):
    back to the real scale (times `gamma`) and rotated back, float64 of length `dim`."""
    return unrotate(total.to(torch.float64) * gamma, dim, seed)


# ---------------------------------------------------------------- noise shares


def skellam_share(
    dim: int, variance: float, min_honest: int, generator: torch.Generator
) -> torch.Tensor:
    """One site's share of the Skellam noise: Poisson(lam) - Poisson(lam) per coordinate
    (int64), lam = variance / (2 m). The shares of any m sites sum to Skellam noise of total
    variance `variance` (sums of independent Poissons are Poisson), the noise the accountant
    counts; each further site adds more. Drawn from the site's private `generator`."""
    if min_honest < 1 or variance <= 0:
        raise ValueError(f"a Skellam share needs variance > 0 and m >= 1: {variance}, {min_honest}")
    rates = torch.full((2, dim), variance / (2 * min_honest), dtype=torch.float64)
    draws = torch.poisson(rates, generator=generator)
    return (draws[0] - draws[1]).to(torch.int64)


# ---------------------------------------------------------------- modular sum


def noise_tail(variance: float, dim: int, failure: float) -> float:
    """A t with P(any of `dim` coordinates of Skellam noise of `variance` has |value| > t) <=
    `failure`: Bernstein's bound for a difference of Poissons, P(|S| >= t) <= 2 exp(-t^2 / (2
    (variance + t / 3))), with a union over the coordinates."""
    log_term = math.log(2 * dim / failure)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * log_term * variance)


def bits_needed(
    n_sites: int, norm_bound: float, share_variance: float, dim: int, failure: float = 1e-9
) -> int:
    """The fewest bits b whose signed range [-2^(b-1), 2^(b-1)) holds every coordinate of the
    noisy sum of `n_sites` sites (each rounded vector of L2 norm <= `norm_bound`, so each
    coordinate of the sum within n * norm_bound, plus `n_sites` shares of `share_variance`
    each) except with probability `failure`."""
    reach = n_sites * norm_bound + noise_tail(n_sites * share_variance, dim, failure)
    return math.ceil(math.log2(reach + 1)) + 1


def check_no_wrap(
    *,
    bits: int,
    n_sites: int,
    norm_bound: float,
    share_variance: float,
    dim: int,
    failure: float = 1e-9,
) -> None:
    """Refuse a modulus 2^bits that the sum could wrap around (ValueError saying the bits
    needed), and more than 62 bits (int64 sums).

    Args:
        bits: the modulus is 2^bits.
        n_sites: how many sites' integer vectors are summed.
        norm_bound: each site's L2 norm bound after rounding.
        share_variance: the variance of each site's noise share, per coordinate.
        dim: the (padded) vector length.
        failure: the probability allowed for the noise's tail to wrap.
    """
    need = bits_needed(n_sites, norm_bound, share_variance, dim, failure)
    if bits < need or bits > 62:
        raise ValueError(
            f"secure aggregation modulo 2^{bits}: the sum of {n_sites} sites (L2 norm bound "
            f"{norm_bound:.6g} each, noise variance {n_sites * share_variance:.6g}) needs "
            f"{need} bits not to wrap (except with probability {failure:g}); at most 62"
        )


def to_modular(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers as residues in [0, 2^bits) (int64): what a site hands to secure aggregation."""
    return torch.remainder(z.to(torch.int64), 1 << bits)


def modular_sum(vectors: Sequence[torch.Tensor], bits: int) -> torch.Tensor:
    """The sum modulo 2^bits of residues (what secure aggregation reveals), reduced after each
    addition so that int64 never overflows (bits <= 62)."""
    total = torch.zeros_like(vectors[0], dtype=torch.int64)
    for v in vectors:
        total = torch.remainder(total + v, 1 << bits)
    return total


def from_modular(total: torch.Tensor, bits: int) -> torch.Tensor:
    """Residues back to signed integers in [-2^(bits-1), 2^(bits-1)): the true sum when it
    cannot wrap (`check_no_wrap`)."""
    return torch.where(total >= 1 << (bits - 1), total - (1 << bits), total)


# ---------------------------------------------------------------- accounting


def rounded_sensitivities(norm: float, beta: float, dim: int) -> tuple[float, float]:
    """(L1, L2) sensitivities, on the integer grid, of a whole vector of L2 norm <= `norm`
    (scaled) after conditional rounding: L2 = `rounded_l2_bound`, L1 = L2 min(sqrt(dim), L2)
    (L1 <= sqrt(dim) L2 always, and <= L2^2 for integers)."""
    l2 = rounded_l2_bound(norm, beta, dim)
    return l2 * min(math.sqrt(dim), l2), l2


def skellam_rdp(
    l1: float, l2: float, variance: float, orders: Sequence[int] = RDP_ORDERS
) -> np.ndarray:
    """RDP of one release of integer sensitivities (`l1`, `l2`) plus Skellam noise of total
    `variance` (mu), at each order a (Agarwal, Kairouz, Liu 2021): a l2^2 / (2 mu) + min(((2a -
    1) l2^2 + 6 l1) / (4 mu^2), 3 l1 / (2 mu)). The first term is the Gaussian mechanism's."""
    a = np.asarray(orders, dtype=np.float64)
    gauss = a * l2**2 / (2 * variance)
    extra = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance))
    return gauss + extra


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[int] = RDP_ORDERS) -> float:
    """(epsilon at `delta`) of an RDP curve: Opacus's conversion (Balle et al. 2020, Theorem
    21), the best order; silent when the best order is the first or last."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        epsilon, _ = get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(epsilon)


def skellam_epsilon(variance: float, l1: float, l2: float, steps: int, delta: float) -> float:
    """Epsilon at `delta` of `steps` full-batch releases (q = 1: RDP adds up) with Skellam noise
    of total `variance` in each."""
    return rdp_to_epsilon(steps * skellam_rdp(l1, l2, variance), delta)


def composed_epsilon(
    variance: float, sensitivities: tuple[float, float], steps: int, delta: float, extra: np.ndarray
) -> float:
    """`skellam_epsilon` (sensitivities (L1, L2)) composed with `extra`, the RDP curve on
    RDP_ORDERS of the run's other releases (e.g. the noisy record count's)."""
    l1, l2 = sensitivities
    return rdp_to_epsilon(steps * skellam_rdp(l1, l2, variance) + extra, delta)


def gaussian_rdp(noise_multiplier: float, orders: Sequence[int] = RDP_ORDERS) -> np.ndarray:
    """RDP of one Gaussian release of sensitivity 1 and std `noise_multiplier` (the noisy
    count's): a / (2 sigma^2)."""
    return np.asarray(orders, dtype=np.float64) / (2 * noise_multiplier**2)


def calibrate_variance(
    *,
    epsilon: float,
    delta: float,
    steps: int,
    l1: float,
    l2: float,
    rtol: float = 1e-6,
    extra: np.ndarray | None = None,
) -> float:
    """The smallest total Skellam variance (to `rtol`) whose `steps` releases spend at most
    `epsilon` at `delta`: a bisection on the log-variance (the epsilon falls as it grows).

    Args:
        epsilon: the target epsilon.
        delta: the target delta.
        steps: how many releases compose (full-batch steps, q = 1).
        l1: the L1 sensitivity after rounding.
        l2: the L2 sensitivity after rounding.
        rtol: the relative tolerance of the bisection.
        extra: the RDP curve of the run's other releases (None: none).
    """
    if not (epsilon > 0 and 0 < delta < 1 and steps >= 1):
        raise ValueError(
            f"calibrate_variance needs epsilon > 0, 0 < delta < 1, steps >= 1: "
            f"{epsilon}, {delta}, {steps}"
        )
    other = np.zeros(len(RDP_ORDERS)) if extra is None else extra
    if rdp_to_epsilon(other, delta) >= epsilon:
        raise ValueError(f"the run's other releases alone spend epsilon {epsilon} or more")

    def spent(variance: float) -> float:
        return composed_epsilon(variance, (l1, l2), steps, delta, other)

    low, high = l2**2, l2**2
    while spent(high) > epsilon:
        high *= 16
    while spent(low) <= epsilon:
        low /= 16
    while high / low > 1 + rtol:
        mid = math.sqrt(low * high)
        if spent(mid) > epsilon:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class Guarantees:
    """A site's two epsilons (at the same delta): `epsilon` when at least `min_honest_sites`
    add their share to every sum (the whole variance), `epsilon_collusion` against a
    coordinator colluding with every other site (only this site's share, variance / m)."""

    epsilon: float
    epsilon_collusion: float
    min_honest_sites: int


def guarantees(
    *,
    variance: float,
    min_honest: int,
    l1: float,
    l2: float,
    steps: int,
    delta: float,
    extra: np.ndarray | None = None,
) -> Guarantees:
    """Both guarantees of a site whose shares are sized for `min_honest` sites and total
    `variance`.

    Args:
        variance: the total Skellam variance of a sum over `min_honest` honest sites.
        min_honest: the sites each sum is guaranteed to hold.
        l1: the L1 sensitivity after rounding.
        l2: the L2 sensitivity after rounding.
        steps: how many releases compose.
        delta: the delta of both epsilons.
        extra: the RDP curve of the run's other releases (None: none).
    """
    other = np.zeros(len(RDP_ORDERS)) if extra is None else extra
    return Guarantees(
        epsilon=composed_epsilon(variance, (l1, l2), steps, delta, other),
        epsilon_collusion=composed_epsilon(variance / min_honest, (l1, l2), steps, delta, other),
        min_honest_sites=min_honest,
    )
