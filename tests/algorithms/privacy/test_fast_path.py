"""The fast DP path (single-backward ghost clipping) against Opacus's reference paths: the same
clipped gradient, the same noise and accounting, the same training; and the benchmark runs."""

import json
import runpy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.paths import REPO as ROOT
from torch import nn

from algorithms.federation.rounds import Rounds, run_federation
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.generative import make_clients, seeded_global_weights, train_generative
from algorithms.privacy.accounting import (
    calibrate_noise,
    epsilon_from_history,
    sample_rate_for,
    steps_per_epoch,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_sgd import dp_step, make_private
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.ghost_clipping import LinearTape
from data.clients import ClientData
from data.features import standardize_records
from models.cvae import CVAE, cvae_loss_per_sample
from utils.seeding import generator

CFG = GenerativeConfig(n_rounds=3, local_epochs=2, batch_size=8, hidden_dim=16, latent_dim=4)


def _cvae_update(mode: str, clip: float) -> torch.Tensor:
    """The noise-free DP update of a tiny CVAE on one batch, as one flat vector."""
    torch.manual_seed(0)
    model = CVAE(input_dim=12, n_classes=3, hidden_dim=8, latent_dim=3)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    private = make_private(
        model=model,
        optimizer=opt,
        n=40,
        batch_size=10,
        cfg=DPConfig(max_grad_norm=clip),
        noise_multiplier=0.0,
        noise_generator=generator(0),
        grad_sample_mode=mode,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, 12, generator=g)
    onehot = F.one_hot(torch.randint(0, 3, (9,), generator=g), 3).float()
    eps = torch.randn(9, 3, generator=g)
    recon, mu, logvar = private.module(x, onehot, eps)
    dp_step(
        private,
        cvae_loss_per_sample(x=x, recon=recon, mu=mu, logvar=logvar, beta=0.1, batch_size=10),
    )
    return before - torch.cat([p.detach().flatten() for p in model.parameters()])


# The per-sample gradient norms lie in 0.490-0.495: all clipped, some, none.
@pytest.mark.parametrize("clip", [0.1, 0.492, 10.0])
def test_fast_clipped_gradient_equals_opacus_ghost_and_hooks_on_a_cvae(clip):
    fast = _cvae_update("fast", clip)
    assert fast.abs().max() > 0
    for reference in ("ghost", "hooks"):
        torch.testing.assert_close(fast, _cvae_update(reference, clip), atol=1e-7, rtol=1e-4)


def _client_data(n: int = 30, dim: int = 6, seed: int = 0, cid: int = 0) -> ClientData:
    rng = np.random.default_rng(seed)
    x = standardize_records(rng.normal(size=(n + 4, dim)))
    y = rng.integers(0, 3, size=n + 4)
    return ClientData(cid, x[:n], y[:n], x[n : n + 2], y[n : n + 2], x[n + 2 :], y[n + 2 :])


def _client(method: str, mode: str, dp: DPConfig | None = None):
    base = CVAEClient if method == "dpcvae" else CGANClient
    cls = type(f"{base.__name__}_{mode}", (base,), {"grad_sample_mode": mode})
    return cls(data=_client_data(), n_classes=3, cfg=CFG, dp=dp or DPConfig(), seed=4)


def _state(client) -> list[torch.Tensor]:
    models = (
        [client.model]
        if isinstance(client, CVAEClient)
        else [client.generator, client.discriminator]
    )
    return [p.detach().clone() for m in models for p in m.parameters()]


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_fast_and_opacus_ghost_train_alike_with_identical_accounting(method):
    # Same seeds: the same Poisson batches and the same noise draws, so the two paths may only
    # differ by floating-point rounding, and the accountants must agree exactly.
    clients = {mode: _client(method, mode) for mode in ("fast", "ghost")}
    weights = seeded_global_weights(method, 6, 3, CFG, seed=0)
    for rnd in range(CFG.n_rounds):
        updates = {mode: c.fit(weights, rnd) for mode, c in clients.items()}
        assert updates["fast"].metrics["epsilon"] == updates["ghost"].metrics["epsilon"]
        weights = updates["fast"].weights
    fast, ghost = (_state(clients[m]) for m in ("fast", "ghost"))
    for a, b in zip(fast, ghost):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(fast, _state(_client(method, "fast"))))
    reports = {m: c.privacy() for m, c in clients.items()}
    assert reports["fast"] == reports["ghost"]


def test_accounting_counts_every_step_at_opacus_rate_with_the_calibrated_noise():
    client = _client("dpcvae", "fast", DPConfig(epsilon=2.0))
    weights = seeded_global_weights("dpcvae", 6, 3, CFG, seed=0)
    for rnd in range(CFG.n_rounds):
        client.fit(weights, rnd)
    n, batch = client.n_released, CFG.batch_size  # the noisy count sets the rate
    assert n != client.n == 30
    rate, per_epoch = sample_rate_for(n, batch), steps_per_epoch(n, batch)
    total = CFG.n_rounds * CFG.local_epochs * per_epoch
    sigma = calibrate_noise(DPConfig(epsilon=2.0), rate, total, per_epoch)
    report = client.privacy()
    history = [[20.0, 1.0, 1], [sigma, rate, total]]  # the count's release, then the steps
    assert report["accountant_history"] == history
    assert report["steps"] == total and report["noise_multiplier"] == sigma
    assert report["epsilon"] == epsilon_from_history("prv", history, 1e-4)
    assert 1.9 <= report["epsilon"] <= 2.0  # the whole budget, spent over the whole training


def test_empty_batch_takes_a_counted_noise_only_step_in_the_fast_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
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
        grad_sample_mode="fast",
    )
    dp_step(private, None)
    assert private.steps() == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_same_noise_stream_in_fast_and_ghost_paths():
    # Zero clipping norm would divide by zero; a huge norm leaves the gradient unclipped, so the
    # update of a zero-loss step is the noise alone, drawn from the same generator.
    updates = []
    for mode in ("fast", "ghost"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        private = make_private(
            model=model,
            optimizer=opt,
            n=20,
            batch_size=10,
            cfg=DPConfig(),
            noise_multiplier=0.7,
            noise_generator=generator(5),
            grad_sample_mode=mode,
        )
        out = private.module(torch.randn(6, 4))
        dp_step(private, (out * 0).sum(dim=1))
        updates.append([b - p.detach() for b, p in zip(before, model.parameters())])
    for a, b in zip(*updates):
        torch.testing.assert_close(a, b)
        assert a.abs().max() > 0


def test_frozen_layers_are_passed_through_as_opacus_does():
    updates = []
    for mode in ("fast", "hooks"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        model[0].requires_grad_(False)
        trained = list(model[2].parameters())
        before = [p.detach().clone() for p in trained]
        opt = torch.optim.SGD(trained, lr=1.0)
        private = make_private(
            model=model,
            optimizer=opt,
            n=20,
            batch_size=10,
            cfg=DPConfig(max_grad_norm=0.1),
            noise_multiplier=0.0,
            noise_generator=generator(0),
            grad_sample_mode=mode,
        )
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
        dp_step(private, private.module(x).pow(2).sum(dim=1))
        updates.append([b - p.detach() for b, p in zip(before, trained)])
    for a, b in zip(*updates):
        torch.testing.assert_close(a, b)


def test_fast_path_refuses_layers_it_cannot_clip():
    with pytest.raises(ValueError, match="ghost"):
        LinearTape(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    partly = nn.Linear(4, 4)
    partly.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="ghost"):
        LinearTape(nn.Sequential(partly))
    layer = nn.Linear(3, 3)
    model = nn.Sequential(layer, nn.ReLU(), layer)  # one layer used twice: tied weights
    private = make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        n=20,
        batch_size=10,
        cfg=DPConfig(),
        noise_multiplier=1.0,
        noise_generator=generator(0),
    )
    with pytest.raises(RuntimeError, match="twice"):
        dp_step(private, private.module(torch.randn(5, 3)).sum(dim=1))


def test_generator_step_is_not_recorded_and_gradients_are_released_after_fit():
    client = _client("dpcgan", "fast")
    client.fit(seeded_global_weights("dpcgan", 6, 3, CFG, seed=0), 0)
    assert client.dp_sgd.tape.records == []
    for model in (client.generator, client.discriminator):
        assert all(p.grad is None for p in model.parameters())
    assert all(getattr(p, "summed_grad", None) is None for p in client.discriminator.parameters())


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_clients_trained_in_threads_give_the_same_run(method):
    data = [_client_data(seed=i, cid=i) for i in range(3)]
    runs = []
    for workers in (1, 3):
        clients = make_clients(
            method=method, clients=data, n_classes=3, cfg=CFG, dp=DPConfig(), seed=2
        )
        start = seeded_global_weights(method, 6, 3, CFG, seed=0)
        weights, history = run_federation(clients, start, Rounds(CFG.n_rounds), workers=workers)
        runs.append((weights, history, [c.privacy() for c in clients]))
    (w1, h1, p1), (w3, h3, p3) = runs
    assert h1 == h3 and p1 == p3
    for k in w1:
        assert torch.equal(w1[k], w3[k])


def test_train_generative_spends_the_thread_budget_on_clients_and_restores_it():
    data = [_client_data(seed=i, cid=i) for i in range(2)]
    seen = []
    original = CVAEClient.fit

    def spy(self, weights, rnd):
        seen.append(torch.get_num_threads())
        return original(self, weights, rnd)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        CVAEClient.fit = spy
        train_generative(method="dpcvae", clients=data, n_classes=3, cfg=CFG, dp=DPConfig(), seed=0)
        assert torch.get_num_threads() == 2
    finally:
        CVAEClient.fit = original
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_benchmark_quick_writes_the_documented_keys(tmp_path):
    bench = runpy.run_path(str(ROOT / "experiments" / "benchmarks" / "bench_train.py"))
    out = tmp_path / "bench.json"
    bench["main"](["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    keys = [
        "sec_per_client_epoch_nodp",
        "sec_per_client_epoch_dp",
        "sec_per_client_epoch_hooks",
        "full_run_sec_dpcvae",
        "full_run_sec_dpcgan",
        "peak_rss_mb",
        "torch_threads",
    ]
    assert all(result[k] > 0 for k in keys)
    assert result["ratio_dp_over_nodp"] == pytest.approx(
        result["sec_per_client_epoch_dp"] / result["sec_per_client_epoch_nodp"]
    )
    assert result["epsilon_max_dpcvae"] <= 1.0
