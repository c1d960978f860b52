"""The Skellam mechanism for secure aggregation (algorithms/privacy/skellam.py): its RDP against
the closed form written here, the Gaussian limit, the calibration and both guarantees, the noise
shares' distribution, the rotation, the conditional rounding, the modular sum and its wrap
check. Tiny vectors, fixed seeds."""

import math

import numpy as np
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from algorithms.privacy import skellam
from utils.seeding import generator


def closed_form_rdp(a: int, l1: float, l2: float, mu: float) -> float:
    """Agarwal, Kairouz, Liu (2021), the Skellam mechanism's RDP at order a (integer domain)."""
    first = a * l2 * l2 / (2 * mu)
    second = ((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu)
    third = 3 * l1 / (2 * mu)
    return first + min(second, third)


@pytest.mark.parametrize(
    "l1, l2, mu",
    [(40.0, 10.0, 50.0), (1e4, 100.0, 1e6), (3e5, 1e3, 2e5)],  # the first: both sides of the min
)
def test_rdp_is_the_closed_form(l1, l2, mu):
    orders = (2, 3, 8, 32, 256)
    got = skellam.skellam_rdp(l1, l2, mu, orders)
    want = [closed_form_rdp(a, l1, l2, mu) for a in orders]
    assert got == pytest.approx(want, rel=1e-12)
    assert np.all(got > np.asarray(orders) * l2 * l2 / (2 * mu))  # above the Gaussian's


def test_epsilon_approaches_the_gaussian_mechanism_for_large_noise():
    """With the sensitivity large on the integer grid (a fine grid), the Skellam epsilon of
    T releases at variance (z l2)^2 tends to the Gaussian mechanism's at noise multiplier z
    (same orders, same conversion), from above."""
    z, steps, delta = 3.0, 20, 1e-5
    orders = skellam.RDP_ORDERS
    gauss = get_privacy_spent(
        orders=list(orders),
        rdp=compute_rdp(q=1.0, noise_multiplier=z, steps=steps, orders=list(orders)),
        delta=delta,
    )[0]
    gaps = []
    for l2 in (10.0, 1e3, 1e5):
        l1 = l2 * math.sqrt(64)
        eps = skellam.skellam_epsilon((z * l2) ** 2, l1, l2, steps, delta)
        assert eps >= gauss
        gaps.append(eps - gauss)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3 * gauss


def test_calibration_is_the_smallest_variance_meeting_the_target():
    l1, l2 = skellam.rounded_sensitivities(300.0, math.exp(-0.5), 256)
    var = skellam.calibrate_variance(epsilon=1.0, delta=1e-4, steps=40, l1=l1, l2=l2)
    assert skellam.skellam_epsilon(var, l1, l2, 40, 1e-4) <= 1.0
    assert skellam.skellam_epsilon(var * (1 - 1e-4), l1, l2, 40, 1e-4) > 1.0
    more_steps = skellam.calibrate_variance(epsilon=1.0, delta=1e-4, steps=80, l1=l1, l2=l2)
    assert more_steps > var
    with pytest.raises(ValueError, match="epsilon > 0"):
        skellam.calibrate_variance(epsilon=0.0, delta=1e-4, steps=40, l1=l1, l2=l2)


def test_guarantees_honest_sites_and_collusion():
    """The m-honest epsilon is the calibrated one; against collusion the site's own share (the
    variance over m) counts, so it is larger for m > 1 and equal for m = 1."""
    l1, l2 = skellam.rounded_sensitivities(300.0, 0.0, 256)
    var = skellam.calibrate_variance(epsilon=1.0, delta=1e-4, steps=40, l1=l1, l2=l2)
    ten = skellam.guarantees(variance=var, min_honest=10, l1=l1, l2=l2, steps=40, delta=1e-4)
    assert ten.epsilon == pytest.approx(1.0, abs=1e-4) and ten.min_honest_sites == 10
    assert ten.epsilon_collusion == skellam.skellam_epsilon(var / 10, l1, l2, 40, 1e-4)
    assert ten.epsilon_collusion > 2.5 * ten.epsilon
    one = skellam.guarantees(variance=var, min_honest=1, l1=l1, l2=l2, steps=40, delta=1e-4)
    assert one.epsilon == one.epsilon_collusion == ten.epsilon


def test_shares_sum_to_skellam_noise_of_the_total_variance():
    """m shares (each site's own generator) sum to integer noise of mean 0 and variance the
    total (statistically, 200k coordinates); one share has variance total / m; the same seed
    gives the same share."""
    dim, total, m = 200_000, 900.0, 4
    shares = [skellam.skellam_share(dim, total, m, generator(100 + i)) for i in range(m)]
    assert all(s.dtype == torch.int64 for s in shares)
    noise = torch.stack(shares).sum(0).double()
    se = math.sqrt(2 / dim)  # relative standard error of a variance estimate (near-normal)
    assert abs(noise.mean().item()) < 5 * math.sqrt(total / dim)
    assert noise.var().item() == pytest.approx(total, rel=5 * se)
    assert shares[0].double().var().item() == pytest.approx(total / m, rel=5 * se)
    # Skellam's excess kurtosis is 1 / variance: the fourth moment is 3 var^2 + var
    fourth = (noise**4).mean().item()
    assert fourth == pytest.approx(3 * total**2 + total, rel=0.05)
    assert torch.equal(shares[0], skellam.skellam_share(dim, total, m, generator(100)))
    with pytest.raises(ValueError, match="variance > 0"):
        skellam.skellam_share(dim, 0.0, m, generator(0))


def test_rotation_is_orthogonal_and_invertible():
    x = torch.randn(37, generator=generator(1), dtype=torch.float64)
    y = skellam.rotate(x, seed=5)
    assert len(y) == 64  # padded to a power of 2
    assert torch.linalg.vector_norm(y).item() == pytest.approx(
        torch.linalg.vector_norm(x).item(), rel=1e-12
    )
    assert torch.allclose(skellam.unrotate(y, 37, seed=5), x, atol=1e-12)
    assert not torch.allclose(skellam.unrotate(y, 37, seed=6), x, atol=1e-3)
    h = torch.randn(16, dtype=torch.float64)
    assert torch.allclose(skellam.hadamard(skellam.hadamard(h)), h, atol=1e-12)
    spike = torch.zeros(37, dtype=torch.float64)
    spike[3] = 8.0  # all on one coordinate: spread evenly by the rotation
    assert skellam.rotate(spike, 5).abs().max().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="power-of-2"):
        skellam.hadamard(torch.zeros(12))


def test_conditional_rounding_respects_the_bound_and_is_unbiased():
    dim, norm = 256, 40.0
    x = skellam.clip_l2(torch.randn(dim, generator=generator(2), dtype=torch.float64) * 10, norm)
    assert torch.linalg.vector_norm(x).item() == pytest.approx(norm)
    bound = skellam.rounded_l2_bound(norm, math.exp(-0.5), dim)
    assert bound < norm + math.sqrt(dim)  # the conditional bound is the tighter one here
    g = generator(3)
    rounded = [skellam.conditional_round(x, bound, g) for _ in range(400)]
    assert all(r.dtype == torch.int64 for r in rounded)
    assert all(torch.linalg.vector_norm(r.double()).item() <= bound for r in rounded)
    assert all(((r - x).abs() < 1).all() for r in rounded)
    mean = torch.stack(rounded).double().mean(0)
    assert (mean - x).abs().max().item() < 5 * 0.5 / math.sqrt(400)
    with pytest.raises(ValueError, match="norm bound"):
        skellam.conditional_round(x, norm / 2, g)


def test_modular_sum_of_sites_equals_the_integer_sum():
    g = torch.Generator().manual_seed(4)
    sites = [torch.randint(-5000, 5000, (300,), generator=g) for _ in range(7)]
    bits = 16  # 7 x 5000 < 2^15
    total = skellam.modular_sum([skellam.to_modular(s, bits) for s in sites], bits)
    assert total.min() >= 0 and total.max() < 2**bits
    assert torch.equal(skellam.from_modular(total, bits), torch.stack(sites).sum(0))


def test_encoded_round_trip_recovers_the_sum_of_clipped_vectors():
    """Three sites encode (clip, rotate, scale, round, share of noise, modular), the sum is
    decoded: it is the sum of the clipped vectors up to rounding and noise."""
    dim, clip, gamma, bits, seed = 50, 1.0, 1e-3, 24, 9
    bound = skellam.rounded_l2_bound(clip / gamma, 0.0, skellam.padded_dim(dim))
    variance = 100.0
    skellam.check_no_wrap(
        bits=bits,
        n_sites=3,
        norm_bound=bound,
        share_variance=variance / 3,
        dim=skellam.padded_dim(dim),
    )
    vectors = [torch.randn(dim, generator=generator(20 + i), dtype=torch.float64) for i in range(3)]
    sent = []
    for i, v in enumerate(vectors):
        z = skellam.conditional_round(
            skellam.rotate(skellam.clip_l2(v, clip), seed) / gamma, bound, generator(30 + i)
        )
        sent.append(
            skellam.to_modular(
                z + skellam.skellam_share(len(z), variance, 3, generator(40 + i)), bits
            )
        )
    total = skellam.from_modular(skellam.modular_sum(sent, bits), bits)
    decoded = skellam.decode(total, gamma, dim, seed)
    want = sum(skellam.clip_l2(v, clip) for v in vectors)
    assert (decoded - want).abs().max().item() < 6 * gamma * math.sqrt(variance + 3)


def test_adversarial_wrap_around_is_refused():
    """A modulus that the sum could wrap is refused with the bits it needs; the noise-tail bound
    holds over a large draw."""
    dim, n, norm, share = 1024, 10, 5000.0, 1e6
    need = skellam.bits_needed(n, norm, share, dim)
    skellam.check_no_wrap(bits=need, n_sites=n, norm_bound=norm, share_variance=share, dim=dim)
    with pytest.raises(ValueError, match=f"needs {need} bits"):
        skellam.check_no_wrap(
            bits=need - 1, n_sites=n, norm_bound=norm, share_variance=share, dim=dim
        )
    with pytest.raises(ValueError, match="at most 62"):
        skellam.check_no_wrap(bits=63, n_sites=n, norm_bound=norm, share_variance=share, dim=dim)
    noise = skellam.skellam_share(100_000, 1e4, 1, generator(8))
    assert noise.abs().max().item() <= skellam.noise_tail(1e4, 100_000, 1e-9)
    assert skellam.noise_tail(1e4, 1, 0.5) > math.sqrt(1e4)
