"""DP-SGD: clipping equals brute force, calibration over the whole training, honest epsilon."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from algorithms.privacy.accounting import (
    calibrate_noise,
    check_count_noise,
    count_epsilon,
    epsilon_from_history,
    privacy_report,
    sample_rate_for,
    steps_per_epoch,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_sgd import dp_step, make_private, poisson_batch
from algorithms.privacy.noise import noisy_count
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
        model=model,
        optimizer=opt,
        n=n,
        batch_size=batch,
        cfg=cfg,
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
        model=model,
        optimizer=opt,
        n=20,
        batch_size=10,
        cfg=DPConfig(),
        noise_multiplier=1.0,
        noise_generator=generator(1),
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
        history = [*cfg.count_history(), (sigma, rate, total)]
        spent = epsilon_from_history(accountant, history, cfg.delta)
        assert 0.99 <= spent <= 1.0
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


def _rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of one Poisson-subsampled Gaussian step at integer order alpha, in closed form
    (Mironov, Talwar and Zhang 2019: the binomial expansion); alpha / (2 sigma^2) at q = 1."""
    if q == 1.0:
        return alpha / (2 * sigma**2)
    terms = [
        math.lgamma(alpha + 1)
        - math.lgamma(k + 1)
        - math.lgamma(alpha - k + 1)
        + (alpha - k) * math.log(1 - q)
        + k * math.log(q)
        + (k * k - k) / (2 * sigma**2)
        for k in range(alpha + 1)
    ]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def _independent_epsilon(history, delta: float) -> float:
    """Epsilon of a composition of (noise multiplier, rate, steps), from the closed-form RDP
    at integer orders 2..255 and the conversion of Balle et al. 2020 (Theorem 21)."""
    best = math.inf
    for alpha in range(2, 256):
        rdp = sum(steps * _rdp_sampled_gaussian(q, s, alpha) for s, q, steps in history)
        eps = (
            rdp + math.log((alpha - 1) / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        )
        best = min(best, eps)
    return best


@pytest.mark.parametrize(("rate", "steps"), [(1.0, 250), (0.25, 400)])
def test_the_noisy_count_and_dp_sgd_compose_as_an_independent_accountant_says(rate, steps):
    """The count's release (noise multiplier count_noise, rate 1, one step) and the calibrated
    DP-SGD steps together meet the target, by an RDP computation written here."""
    cfg = DPConfig(epsilon=1.0, accountant="rdp", count_noise=10.0)
    sigma = calibrate_noise(cfg, rate, steps, 4)
    composed = [(10.0, 1.0, 1), (sigma, rate, steps)]
    assert list(cfg.count_history()) == composed[:1]
    ours = epsilon_from_history("rdp", composed, cfg.delta)
    independent = _independent_epsilon(composed, cfg.delta)
    # Opacus also tries fractional orders: at most slightly below the integer-order bound
    assert independent * 0.97 <= ours <= independent * 1.0001
    assert 0.97 <= independent <= 1.01
    # the count costs budget: DP-SGD alone at that sigma spends less, and without the count
    # the calibration needs less noise
    assert _independent_epsilon(composed[1:], cfg.delta) < independent - 0.01
    assert calibrate_noise(DPConfig(accountant="rdp", count_noise=0.0), rate, steps, 4) < sigma
    # the count alone, as a Gaussian mechanism of sensitivity 1
    assert count_epsilon(cfg) == pytest.approx(
        _independent_epsilon(composed[:1], cfg.delta), rel=0.03
    )


def test_a_private_client_accounts_for_its_count_and_reports_it():
    model = _tiny()
    cfg = DPConfig(count_noise=20.0)
    private = make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        n=50,
        batch_size=10,
        cfg=cfg,
        noise_multiplier=2.0,
        noise_generator=generator(1),
        count_history=cfg.count_history(),
    )
    dp_step(private, None)
    dp_step(private, None)
    assert private.steps() == 2
    assert private.engine.accountant.history == [(20.0, 1.0, 1), (2.0, 0.2, 2)]
    assert private.epsilon(cfg.delta) == pytest.approx(
        epsilon_from_history("prv", [(20.0, 1.0, 1), (2.0, 0.2, 2)], cfg.delta)
    )
    line = {"id": 0, "noise_source": "secure", "noise_multiplier": 2.0, "epsilon": 0.5}
    report = privacy_report(cfg, [line])
    assert report["count_noise"] == 20.0 and report["noise_source"] == "secure"
    assert report["noise_caveat"] is None
    assert not any("clear" in item for item in report["not_covered"])
    exact = privacy_report(DPConfig(count_noise=0.0), [{**line, "noise_source": "seeded"}])
    assert "run seed" in exact["noise_caveat"]
    assert any("--count_noise 0" in item for item in exact["not_covered"])


def test_the_noisy_count_is_unbiased_clamped_and_exact_without_noise():
    g = generator(0)
    counts = np.array([noisy_count(67, 20.0, g) for _ in range(4000)])
    assert abs(counts.mean() - 67) < 1.5 and 18 < counts.std() < 22
    assert all(isinstance(c, int) for c in counts.tolist())
    assert min(noisy_count(1, 20.0, g) for _ in range(200)) == 1
    assert noisy_count(67, 0.0, g) == 67
    # the accountant runs when a run starts (and before a calibration), not in the config
    cfg = DPConfig(epsilon=1.0, count_noise=0.5)
    with pytest.raises(ValueError, match="--count_noise 0.5 alone spends"):
        check_count_noise(cfg)
    with pytest.raises(ValueError, match="--count_noise 0.5 alone spends"):
        calibrate_noise(cfg, 0.1, 100, 10)
    with pytest.raises(ValueError, match="--count_noise"):
        DPConfig(count_noise=-1.0)
