"""DP-SGD: clipping equals brute force, calibration over the whole training, honest epsilon."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from algorithms.privacy import (
    DPConfig,
    calibrate_noise,
    dp_step,
    epsilon_from_history,
    make_private,
    poisson_batch,
    sample_rate_for,
    steps_per_epoch,
)
from utils.seeding import generator


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("mode", ["fast", "ghost", "hooks"])
def test_noise_free_dp_update_equals_brute_force_clip_and_sum(mode):
    n, batch, clip = 40, 10, 0.05
    x = torch.randn(n, 4)
    y = torch.randn(n, 2)
    model = _tiny()
    reference = _tiny()  # same initialization
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = DPConfig(max_grad_norm=clip)
    private = make_private(
        model,
        opt,
        n,
        batch,
        cfg,
        noise_multiplier=0.0,
        noise_generator=generator(0),
        grad_sample_mode=mode,
    )
    idx = torch.arange(7)  # any batch; the mean divides by the *expected* batch size
    loss = ((private.module(x[idx]) - y[idx]) ** 2).sum(dim=1)
    dp_step(private, loss)

    summed = [torch.zeros_like(p) for p in reference.parameters()]
    for i in idx:
        reference.zero_grad()
        ((reference(x[i : i + 1]) - y[i : i + 1]) ** 2).sum().backward()
        grads = [p.grad.clone() for p in reference.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for s, g in zip(summed, grads):
            s += factor * g
    expected_batch = int(n * sample_rate_for(n, batch))
    with torch.no_grad():
        for p_dp, p_ref, s in zip(model.parameters(), reference.parameters(), summed):
            torch.testing.assert_close(p_dp, p_ref - s / expected_batch, atol=1e-6, rtol=1e-5)
    assert private.steps() == 1


def test_empty_poisson_batch_still_takes_a_noisy_counted_step():
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    private = make_private(
        model, opt, 20, 10, DPConfig(), noise_multiplier=1.0, noise_generator=generator(1)
    )
    dp_step(private, None)
    assert private.steps() == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sampling_rate_and_steps_follow_opacus():
    assert sample_rate_for(1000, 256) == 1 / 4 and steps_per_epoch(1000, 256) == 4
    assert sample_rate_for(100, 256) == 1.0
    sizes = [len(poisson_batch(1000, 0.25, generator(s))) for s in range(50)]
    assert 200 < np.mean(sizes) < 300 and len(set(sizes)) > 5


def test_calibration_meets_the_target_over_all_steps_and_paper_mode_does_not():
    rate, steps_epoch, total = 1 / 7, 7, 50 * 5 * 7
    for accountant in ("prv", "rdp"):
        cfg = DPConfig(epsilon=1.0, accountant=accountant)
        sigma = calibrate_noise(cfg, rate, total, steps_epoch)
        spent = epsilon_from_history(accountant, [(sigma, rate, total)], cfg.delta)
        assert 0.98 <= spent <= 1.0
        paper = DPConfig(epsilon=1.0, accountant=accountant, calibration="paper")
        sigma_paper = calibrate_noise(paper, rate, total, steps_epoch)
        assert sigma_paper < sigma
        # the paper's calibration spends several times the target over 50 x 5 epochs
        assert epsilon_from_history(accountant, [(sigma_paper, rate, total)], 1e-4) > 3.0


def test_prv_needs_less_noise_than_rdp_for_the_same_guarantee():
    prv = calibrate_noise(DPConfig(accountant="prv"), 1 / 7, 1750, 7)
    rdp = calibrate_noise(DPConfig(accountant="rdp"), 1 / 7, 1750, 7)
    assert prv < rdp


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"epsilon": 0}, "--epsilon"),
        ({"epsilon": -1}, "--epsilon"),
        ({"epsilon": math.inf}, "--epsilon"),
        ({"delta": 0}, "--delta"),
        ({"delta": 1.0}, "--delta"),
        ({"max_grad_norm": 0}, "--max_grad_norm"),
        ({"accountant": "gdp"}, "--accountant"),
        ({"calibration": "x"}, "--dp_calibration"),
    ],
)
def test_bad_privacy_settings_name_their_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        DPConfig(**kwargs)
