"""The DP-SGD noise is sampled in float64 and then cast (algorithms/privacy/noise.py): torch's
float32 Box-Muller never draws beyond about 5.8 sigma, a tail the accountant does not count."""

import math

import pytest
import torch

from algorithms.privacy.noise import dpsgd_noise
from utils.seeding import generator


def test_adversarial_noise_is_float64_draws_cast_and_deterministic():
    """The noise equals float64 draws of the same generator cast to the gradient's dtype (not
    torch's float32 sampler), the same for the same seed; in float64 it keeps float64 precision."""
    shape = (64, 33)
    drawn = dpsgd_noise(1.5, shape, generator(7))
    wide = torch.normal(0.0, 1.5, size=shape, generator=generator(7), dtype=torch.float64)
    assert torch.equal(drawn, wide.float())
    assert torch.equal(drawn, dpsgd_noise(1.5, shape, generator(7)))
    narrow = torch.normal(0.0, 1.5, size=shape, generator=generator(7))
    assert not torch.equal(drawn, narrow)  # float32 sampling would give other draws
    full = dpsgd_noise(1.0, shape, generator(7), torch.float64)
    assert full.dtype == torch.float64
    assert not torch.equal(full, full.float().double())  # more than float32's 24 bits


def test_adversarial_noise_tails_occur_at_the_gaussian_rate():
    """In a large sample the share of draws beyond 4.5 sigma matches the Gaussian's (within
    five binomial standard deviations), with mean 0 and standard deviation 1."""
    n, cut = 4_000_000, 4.5
    z = dpsgd_noise(1.0, (n,), generator(11), torch.float64)
    p = math.erfc(cut / math.sqrt(2))
    hits = int((z.abs() > cut).sum())
    assert abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1
    assert z.mean().abs() < 5 / math.sqrt(n)
    assert z.std().item() == pytest.approx(1.0, abs=5e-3)
