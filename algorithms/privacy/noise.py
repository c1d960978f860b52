"""The noise draws of DP: DP-SGD's Gaussian noise (Box-Muller, its tail refined), the noise
of a one-shot Gaussian release, and the released (noisy) record count."""

from __future__ import annotations

import math

import torch


def noisy_count(n: int, count_noise: float, generator: torch.Generator) -> int:
    """The released record count: n + N(0, count_noise^2), rounded and clamped to >= 1
    (post-processing); n itself when count_noise is 0."""
    if count_noise == 0:
        return n
    noise = float(torch.randn(1, generator=generator, dtype=torch.float64))
    return max(1, round(n + count_noise * noise))


# Radius uniforms below this get 53 more bits (Box-Muller's tail beyond 4.08 sigma).
REFINE_BELOW = 2.0**-12


def normal(n: int, std: float, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """`n` draws of N(0, std^2) in `dtype` (float32, or float64 for float64) on the generator's
    device: Box-Muller on pairs, with the radius uniform refined where the tail needs it.
    Deterministic for a fixed generator state and shape-free (the same first `n` values
    whatever shape the caller gives them).

    Why not torch's sampler: its float32 normals take 24-bit uniforms, so they stop at
    sqrt(-2 ln 2^-24) = 5.77 sigma (a mass of 6e-8 per pair that no accountant counts), and its
    float64 normals are scalar code on CPU (13-17 ms a step for 740k parameters, 5x this).

    The tail: the radius is sqrt(-2 ln W) with W = U + u, U the grid uniform of `dtype` on
    [0, 1) (k u, u = 2^-24 in float32 on CPU: one 32-bit word per draw, as torch's float32
    sampler), so W is uniform on the grid of (0, 1]. Where W <= 2^-12 (radius >= 4.08 sigma),
    W - V u with a fresh float64 uniform V replaces it: W is then uniform on (0, 2^-12] on a
    2^-77 grid, so the radius's law is exact beyond 4.08 sigma up to sqrt(-2 ln 2^-77) = 10.33
    sigma, and the only mass cut is P(R > 10.33) = 2^-77 (6.6e-24) per pair (cos and sin reach
    +-1 on the angle's grid). Below 4.08 sigma the radius is on the 24-bit grid, as torch's own
    float32 normals. See docs/privacy.md, "The DP-SGD noise"."""
    pairs = (n + 1) // 2
    work = torch.float64 if dtype == torch.float64 else torch.float32
    draw = torch.rand(2 * pairs, generator=generator, device=generator.device, dtype=work)
    small = torch.nonzero(draw[:pairs] < REFINE_BELOW).flatten()
    refine = torch.rand(
        len(small), generator=generator, device=generator.device, dtype=torch.float64
    )
    return box_muller_(draw, std, small, refine)[:n]


def box_muller_(
    draw: torch.Tensor, std: float, small: torch.Tensor, refine: torch.Tensor
) -> torch.Tensor:
    """The Box-Muller transform, in place, of 2m grid uniforms in [0, 1) (`draw`: m for the
    radii, then m for the angles, in the output's dtype): the m sines, then the m cosines, of
    the angles 2 pi turn, times the radii std sqrt(-2 ln W), W = uniform + u, except at the
    indices `small` (where W <= REFINE_BELOW), where W - refine u takes it (`refine` float64
    uniforms in [0, 1); u the grid step of `draw`'s dtype, 2^-24 or 2^-53). In place: fresh
    buffers cost page faults, a large part of the time of a draw this cheap."""
    pairs = len(draw) // 2
    w, angle = draw[:pairs], draw[pairs:]
    grid = torch.finfo(draw.dtype).eps / 2
    w.add_(grid)
    w[small] = (w[small].to(torch.float64) - refine * grid).to(w.dtype)
    radius = w.log_().mul_(-2.0 * std * std).sqrt_()
    angle.mul_(2 * math.pi)
    sine = torch.sin(angle)
    angle.cos_().mul_(radius)
    radius.mul_(sine)
    return draw


def dpsgd_noise(
    std: float,
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One Gaussian noise draw of DP-SGD in `dtype` (the gradient's), on the generator's device
    (a CUDA generator draws on the GPU): `normal`'s draws, with their tail exact to 10.3 sigma,
    at about twice the cost of torch's float32 normals (which stop at 5.77 sigma).
    Deterministic for a fixed generator state; Opacus's own optimizers (the `ghost` and `hooks`
    modes) draw through this function too (opacus_compat.py), so every mode and the vectorized
    path give the same noise."""
    return normal(math.prod(shape), std, generator, dtype).view(tuple(shape)).to(dtype)


def release_noise(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of standard deviation `std` (float64), drawn from `generator` (zeros
    when `std` is 0: DP switched off)."""
    if std == 0:
        return torch.zeros(shape, dtype=torch.float64)
    return torch.normal(0.0, std, size=shape, generator=generator, dtype=torch.float64)
