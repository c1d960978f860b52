"""The noise draws of DP: DP-SGD's Gaussian noise (float64, then cast), the noise of a one-shot
Gaussian release, and the released (noisy) record count."""

from __future__ import annotations

import torch


def noisy_count(n: int, count_noise: float, generator: torch.Generator) -> int:
    """The released record count: n + N(0, count_noise^2), rounded and clamped to >= 1
    (post-processing); n itself when count_noise is 0."""
    if count_noise == 0:
        return n
    noise = float(torch.randn(1, generator=generator, dtype=torch.float64))
    return max(1, round(n + count_noise * noise))


def dpsgd_noise(
    std: float,
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One Gaussian noise draw of DP-SGD (on the generator's device: a CUDA generator draws on
    the GPU), sampled in float64 and then cast to `dtype` (the gradient's).

    Why float64: torch's float32 Box-Muller takes its uniforms with 24 bits, so its draws never
    exceed about 5.8 sigma; that cut tail is an extra delta (about 4e-6 over 1,750 steps) that no
    accountant counts. In float64 the uniforms have 53 bits (tails to about 8.6 sigma, a missing
    mass below 1e-17 per draw). Deterministic for a fixed generator state; Opacus's own
    optimizers (the `ghost` and `hooks` modes) draw through this function too (opacus_compat.py), so
    every mode and the vectorized path give the same noise."""
    draw = torch.normal(
        mean=0.0,
        std=std,
        size=tuple(shape),
        generator=generator,
        device=generator.device,
        dtype=torch.float64,
    )
    return draw.to(dtype)


def release_noise(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of standard deviation `std` (float64), drawn from `generator` (zeros
    when `std` is 0: DP switched off)."""
    if std == 0:
        return torch.zeros(shape, dtype=torch.float64)
    return torch.normal(0.0, std, size=shape, generator=generator, dtype=torch.float64)
