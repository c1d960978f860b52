"""The analytic Gaussian mechanism (Balle & Wang 2018): the exact (epsilon, delta) of one
Gaussian release, and the noise that a target needs. accounting.py calibrates and
accounts DP-FedPFT's one-shot release with these; tests cross-check them against Opacus's PRV
accountant.

A noise multiplier s means noise of standard deviation s times the release's L2 sensitivity.
"""

from __future__ import annotations

import math

from scipy.special import log_ndtr, ndtr

# Bisection ends when the bracket is this narrow (absolute for epsilon, relative for noise).
TOLERANCE = 1e-10


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """The exact delta at `epsilon` of one Gaussian mechanism (Balle & Wang 2018, Theorem 8):
    Phi(1 / (2 s) - eps s) - e^eps Phi(-1 / (2 s) - eps s). It decreases in epsilon and in s."""
    s = float(noise_multiplier)
    a, b = 1.0 / (2.0 * s), epsilon * s
    return float(ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)))


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The smallest epsilon at which one Gaussian mechanism with this noise multiplier is
    (epsilon, delta)-DP: at most TOLERANCE above the exact value, never below it. Infinite
    without noise."""
    if not noise_multiplier > 0:
        return math.inf
    if gaussian_delta(noise_multiplier, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(noise_multiplier, hi) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > TOLERANCE:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if gaussian_delta(noise_multiplier, mid) <= delta else (mid, hi)
    return hi


def analytic_gaussian_noise(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier (within TOLERANCE relative, on the safe side) at which one
    Gaussian mechanism is (epsilon, delta)-DP."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > TOLERANCE * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if mid > 0 and gaussian_delta(mid, epsilon) <= delta else (mid, hi)
    return hi
