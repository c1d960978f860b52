"""The code that depends on Opacus internals (algorithms/privacy/opacus_compat.py) against
Opacus itself: the fast DP step equals `DPOptimizer.step` bit for bit, the memoized RDP terms
leave the PRV epsilon unchanged, and Opacus's own noise sampler is routed through `noise`
(Box-Muller with its tail refined)."""

import pytest
import torch
from torch import nn

from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_sgd import dp_step, make_private
from algorithms.privacy.ghost_clipping import clip_and_sum_linear
from algorithms.privacy.noise import dpsgd_noise
from algorithms.privacy.opacus_compat import load_opacus
from utils.seeding import generator


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_fast_noise_step_equals_opacus_optimizer_step_bit_for_bit(sigma):
    # The same clipped sums in .grad; one path adds noise, scales and steps through Opacus's
    # DPOptimizer.step(), the other through the fast path's own copy-free step.
    results = []
    for own_step in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        private = make_private(
            model=model,
            optimizer=opt,
            n=30,
            batch_size=8,
            cfg=DPConfig(),
            noise_multiplier=sigma,
            noise_generator=generator(2),
            grad_sample_mode="fast",
        )
        for step in range(3):
            x = torch.randn(7, 5, generator=torch.Generator().manual_seed(step))
            loss = private.module(x).pow(2).sum(dim=1)
            if own_step:
                dp_step(private, loss)
            else:
                private.optimizer.zero_grad(set_to_none=True)
                clip_and_sum_linear(private.tape.take(), loss, private.optimizer.max_grad_norm)
                private.optimizer.step()
        results.append(
            ([p.detach().clone() for p in model.parameters()], private.engine.accountant.history)
        )
    (params_a, history_a), (params_b, history_b) = results
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert history_a == history_b == [(sigma, 1 / 4, 3)]


def test_memoized_rdp_terms_leave_the_prv_epsilon_unchanged(monkeypatch):
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis import rdp

    def fresh_epsilon(steps):
        acc = PRVAccountant()
        acc.history = [(1.3, 1 / 7, steps)]
        return acc.get_epsilon(delta=1e-4)

    memoized = [fresh_epsilon(k) for k in (7, 70, 700)]
    assert rdp._compute_rdp.cache_info().currsize > 0
    monkeypatch.setattr(rdp, "_compute_rdp", rdp._compute_rdp.__wrapped__)
    assert [fresh_epsilon(k) for k in (7, 70, 700)] == memoized


def test_adversarial_dp_noise_is_the_refined_box_muller_in_every_path(monkeypatch):
    """Every DP-SGD noise draw (the fast step's, the stacked path's slot draws, Opacus's own
    optimizers') is `noise.normal`'s: float32 uniforms for radii and angles, then float64
    uniforms refining the radii's tail (torch's normal sampler is never asked)."""
    load_opacus()  # routes Opacus's sampler through noise
    import opacus.optimizers.optimizer as plain
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    asked = []
    real_rand = torch.rand

    def spy(*args, **kwargs):
        asked.append(kwargs.get("dtype"))
        return real_rand(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.normal called")

    monkeypatch.setattr(torch, "rand", spy)
    monkeypatch.setattr(torch, "normal", refuse)
    out = dpsgd_noise(1.0, (3, 5), generator(0))
    assert out.dtype == torch.float32 and asked == [torch.float32, torch.float64]
    ref = torch.zeros(7, dtype=torch.float32)
    for module in (plain, ghost):
        asked.clear()
        drawn = module._generate_noise(2.0, ref, generator=generator(1))
        assert drawn.dtype == torch.float32 and asked == [torch.float32, torch.float64]
