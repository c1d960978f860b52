"""The DP-SGD noise (algorithms/privacy/noise.py): Box-Muller on float32 uniforms with the radius
refined by float64 uniforms in the tail. Its distribution is the normal's (moments, KS), its tail
reaches beyond the 5.77 sigma where torch's float32 sampler stops (to 10.33 sigma), and it is
deterministic and shape-free."""

import math

import pytest
import torch
from scipy import stats

from algorithms.privacy.noise import REFINE_BELOW, box_muller_, dpsgd_noise, normal
from utils.seeding import generator

# torch's float32 normal sampler takes 24-bit uniforms: it never exceeds sqrt(-2 ln 2^-24).
FLOAT32_SAMPLER_MAX = math.sqrt(-2 * math.log(2.0**-24))


def test_adversarial_noise_is_the_box_muller_of_the_generators_uniforms():
    """The noise is the in-place Box-Muller transform of the generator's float32 uniforms
    (radii, then angles) and its float64 refinements of the radii below REFINE_BELOW, times
    std; the same for the same seed, shape-free (the stacked path draws flat slots), and not
    torch's float32 sampler's draws."""
    shape = (640, 331)
    n = math.prod(shape)
    drawn = dpsgd_noise(1.5, shape, generator(7))
    g = generator(7)
    draw = torch.rand(n, generator=g)
    small = torch.nonzero(draw[: n // 2] < REFINE_BELOW).flatten()
    assert len(small) > 0  # this draw exercises the refinement
    refine = torch.rand(len(small), generator=g, dtype=torch.float64)
    assert torch.equal(drawn, box_muller_(draw, 1.5, small, refine).view(shape))
    assert torch.equal(drawn, dpsgd_noise(1.5, shape, generator(7)))
    assert torch.equal(drawn.flatten(), dpsgd_noise(1.5, (n,), generator(7)))
    assert drawn.dtype == torch.float32 and drawn.shape == shape
    narrow = torch.normal(0.0, 1.5, size=shape, generator=generator(7))
    assert not torch.equal(drawn, narrow)
    odd = normal(5, 1.0, generator(3), torch.float32)
    assert odd.shape == (5,)
    full = dpsgd_noise(1.0, shape, generator(7), torch.float64)
    assert full.dtype == torch.float64
    assert not torch.equal(full, full.float().double())  # more than float32's 24 bits


def test_adversarial_noise_tail_reaches_beyond_the_float32_cut():
    """torch's float32 uniforms lie on the 2^-24 grid, so 0 is a draw; refined by a float64
    uniform near 1 it gives W = 2^-77 and noise of +-10.33 sigma (sine at pi/2, cosine at 0
    and pi): far beyond the 5.77 sigma of torch's float32 sampler. A uniform just above
    REFINE_BELOW is left as it is (radius just under 4.08); the largest gives radius near 0."""
    u = torch.rand(100_000, generator=generator(5))
    assert torch.equal(u * 2.0**24, (u * 2.0**24).round())  # the 24-bit grid
    top = 1 - 2.0**-53  # the largest float64 uniform
    draw = torch.tensor([0.0, 0.0, 0.0, REFINE_BELOW, 1 - 2.0**-24, 0.25, 0.0, 0.5, 0.0, 0.0])
    z = box_muller_(
        draw.clone(), 1.0, torch.tensor([0, 1, 2]), torch.tensor([top] * 3, dtype=torch.float64)
    )
    sines, cosines = z[:5], z[5:]
    far = math.sqrt(154 * math.log(2))
    assert far > 10.3 > FLOAT32_SAMPLER_MAX + 4.5
    assert sines[0].item() == pytest.approx(far, rel=1e-5)  # sine at pi / 2
    assert cosines[1].item() == pytest.approx(far, rel=1e-5)  # cosine at 0
    assert cosines[2].item() == pytest.approx(-far, rel=1e-5)  # cosine at pi
    edge = math.sqrt(-2 * math.log(REFINE_BELOW + 2.0**-24))  # W = U + 2^-24, not refined
    assert cosines[3].item() == pytest.approx(edge, rel=1e-6)
    assert abs(cosines[4].item()) < 1e-3
    assert z.abs().max().item() <= far * (1 + 1e-6)
    twice = box_muller_(
        draw.clone(), 2.0, torch.tensor([0, 1, 2]), torch.tensor([top] * 3, dtype=torch.float64)
    )
    assert torch.allclose(twice, 2 * z)


def test_noise_has_the_normal_distribution():
    """One million float32 draws: mean 0, variance 1, kurtosis 3, the cosine and sine halves
    uncorrelated, and a KS test against N(0, 1) that does not reject (fixed seed)."""
    n = 1_000_000
    z = dpsgd_noise(1.0, (n,), generator(11)).double()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert z.var().item() == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert (z**4).mean().item() == pytest.approx(3.0, abs=5 * math.sqrt(96 / n))
    cos, sin = z[: n // 2], z[n // 2 :]
    assert abs((cos * sin).mean().item()) < 5 / math.sqrt(n / 2)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    scaled = dpsgd_noise(2.5, (n,), generator(11)).double()
    assert torch.allclose(scaled, 2.5 * z, rtol=1e-6, atol=0)


def test_adversarial_noise_tails_occur_at_the_gaussian_rate():
    """In a large sample of the float32 path the share of draws beyond 4.5 sigma matches the
    Gaussian's (within five binomial standard deviations)."""
    n, cut = 4_000_000, 4.5
    z = dpsgd_noise(1.0, (n,), generator(12))
    p = math.erfc(cut / math.sqrt(2))
    hits = int((z.abs() > cut).sum())
    assert abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1
