"""The vectorized path (every simulated client at once, one stacked model) against the per-client
path, the bit-exact reference: the same clipped sums, noise draws, updates and accounting, to
float32 rounding; and whole runs that give the same metrics.json.

Tolerances (float32), relative to the largest entry of each tensor: a step's clipped sums 1e-6;
the noised, scaled gradients bit-identical (the same draws); after several rounds, DP-trained
networks 1e-6, networks trained without clipping and noise (the CGAN's generator, --dp off)
2e-5; the accountant's history and epsilon exactly equal. Whole runs: every float of
metrics.json to 1e-6 relative, the privacy block exactly."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import FAST, TINY, tiny

import main as main_module
from algorithms.federation.rounds import Rounds, run_federation
from algorithms.federation.stacked import StackedAdam, forward, pad_rows, stack
from algorithms.federation.vectorized import CVAEEngine, run_vectorized
from algorithms.methods.generative import make_clients, seeded_global_weights
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.ghost_clipping import (
    LinearTape,
    Recorded,
    clip_and_sum_linear,
    clip_and_sum_stacked,
)
from algorithms.privacy.opacus_compat import noise_and_account_stacked, noise_and_step
from data.clients import ClientData
from data.features import standardize_records
from models.cvae import CVAE, cvae_loss_per_sample

CFG = GenerativeConfig(n_rounds=3, local_epochs=2, batch_size=8, hidden_dim=16, latent_dim=4)
# the RDP accountant calibrates in milliseconds (PRV takes seconds per client size)
DP = DPConfig(accountant="rdp")
# clients of 19, 30 and 45 records: 3, 4 and 6 steps per epoch at sampling rates 1/3, 1/4, 1/6
SIZES = (30, 19, 45)


def _data(n: int, cid: int, dim: int = 6) -> ClientData:
    rng = np.random.default_rng(cid)
    x = standardize_records(rng.normal(size=(n + 4, dim)))
    y = rng.integers(0, 3, size=n + 4)
    return ClientData(cid, x[:n], y[:n], x[n : n + 2], y[n : n + 2], x[n + 2 :], y[n + 2 :])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference relative to the largest entry of `a`."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def _cvaes(n_layers: int = 3, encoder_scale: float = 1.0) -> list[CVAE]:
    models = []
    for k in range(3):
        torch.manual_seed(k)
        models.append(
            CVAE(
                input_dim=10,
                n_classes=3,
                hidden_dim=8,
                latent_dim=3,
                n_layers=n_layers,
                encoder_scale=encoder_scale,
            )
        )
    return models


@pytest.mark.parametrize(
    ("n_layers", "scale", "loss", "clip"),
    [(3, 1.0, "paper", 1e-3), (3, 1.0, "paper", 1e3), (0, 0.1, "elbo", 0.5), (1, 1.0, "elbo", 2.0)],
)
def test_stacked_clipped_sums_equal_each_clients_own(n_layers, scale, loss, clip):
    """Clients with batches of 7, 0 and 12 samples: each row of the stacked clipped sum is that
    client's `clip_and_sum_linear` (all clipped, none clipped, mixed; every CVAE depth)."""
    models = _cvaes(n_layers, scale)
    g = torch.Generator().manual_seed(5)
    sizes = [7, 0, 12]
    xs = [torch.rand(n, 10, generator=g) for n in sizes]
    ohs = [F.one_hot(torch.randint(0, 3, (n,), generator=g), 3).float() for n in sizes]
    eps = [torch.randn(n, 3, generator=g) for n in sizes]
    own = []
    for model, x, oh, e in zip(models, xs, ohs, eps):
        tape = LinearTape(model)
        recon, mu, logvar = Recorded(model, tape)(x, oh, e)
        per_sample = cvae_loss_per_sample(
            x=x, recon=recon, mu=mu, logvar=logvar, beta=0.1, batch_size=8, loss=loss
        )
        if len(x):
            clip_and_sum_linear(tape.take(), per_sample, clip)
        else:  # an empty batch: zero sum (the DP step's noise-only step)
            tape.records.clear()
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        own.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    layout, flat = stack(models, torch.device("cpu"))
    params, records = layout.views(flat), []
    x, oh, e = (pad_rows(t, max(sizes)) for t in (xs, ohs, eps))
    model = models[0]
    h = forward(model.encoder, "encoder", params, torch.cat([x * scale, oh], 2), records)
    mu = forward(model.mu, "mu", params, h, records)
    logvar = forward(model.logvar, "logvar", params, h, records)
    z = mu + e * torch.exp(0.5 * logvar)
    recon = forward(model.decoder, "decoder", params, torch.cat([z, oh], 2), records)
    mask = (torch.arange(max(sizes)) < torch.tensor(sizes)[:, None]).float()
    per_sample = (
        cvae_loss_per_sample(
            x=x, recon=recon, mu=mu, logvar=logvar, beta=0.1, batch_size=8, loss=loss
        )
        * mask
    )
    stacked = clip_and_sum_stacked(records, per_sample, clip, layout)
    for k, row in enumerate(own):
        if sizes[k] == 0:
            assert torch.equal(stacked[k], torch.zeros_like(row))
        else:
            assert _rel(row, stacked[k]) <= 1e-6


def test_stacked_noise_draws_and_scaling_equal_the_dp_optimizers():
    """The same clipped sums in both paths: the noised, scaled gradients are bit-identical (each
    client's own generator, same calls and shapes), and each accountant counts the step."""
    data = [_data(n, i) for i, n in enumerate(SIZES)]
    clients = make_clients(method="dpcvae", clients=data, n_classes=3, cfg=CFG, dp=DP, seed=1)
    twins = make_clients(method="dpcvae", clients=data, n_classes=3, cfg=CFG, dp=DP, seed=1)
    engine = CVAEEngine(clients)
    sums = torch.randn(3, engine.layout.size, generator=torch.Generator().manual_seed(0))
    grad = sums.clone()
    noise_and_account_stacked(engine.dp_sgd, grad, engine.layout, [True, False, True])
    for k, twin in enumerate(twins):
        if k == 1:  # not active: no draw, no accountant step
            assert clients[k].dp_sgd.steps() == 0
            assert torch.equal(clients[k].rng_noise.get_state(), twin.rng_noise.get_state())
            continue
        opt = twin.dp_sgd.optimizer
        for p, view in zip(opt.params, engine.layout.row(sums, k).values()):
            p.grad = view.clone()
        before = [p.detach().clone() for p in opt.params]
        noise_and_step(opt)  # noise, scaling, accountant, then the Adam update
        noised = torch.cat([p.grad.flatten() for p in opt.params])
        assert torch.equal(noised, grad[k])
        assert any(not torch.equal(a, b) for a, b in zip(before, opt.params))
        # the noisy record count's release first (DPConfig.count_history), then this one step
        assert clients[k].dp_sgd.engine.accountant.history == [
            *DP.count_history(),
            (opt.noise_multiplier, twin.dp_sgd.sample_rate, 1),
        ]


def test_stacked_adam_equals_torch_adam_per_client_with_masked_steps():
    torch.manual_seed(0)
    flat = torch.randn(3, 20)
    reference = [torch.nn.Parameter(flat[k].clone()) for k in range(3)]
    opts = [torch.optim.Adam([p], lr=1e-2, betas=(0.5, 0.999), fused=True) for p in reference]
    stacked = flat.clone()
    adam = StackedAdam(stacked, 1e-2, (0.5, 0.999))
    for step in range(6):
        grad = torch.randn(3, 20, generator=torch.Generator().manual_seed(step))
        active = [True, step < 2, step % 2 == 0]
        adam.step(grad, active)
        for k, (p, opt) in enumerate(zip(reference, opts)):
            if active[k]:
                p.grad = grad[k].clone()
                opt.step()
    for k, p in enumerate(reference):
        torch.testing.assert_close(stacked[k], p.detach(), rtol=1e-6, atol=1e-7)
    assert adam.steps == [6, 2, 3]


def _train(method: str, vectorized: bool, dp: DPConfig, cfg: GenerativeConfig = CFG):
    data = [_data(n, i) for i, n in enumerate(SIZES)]
    clients = make_clients(method=method, clients=data, n_classes=3, cfg=cfg, dp=dp, seed=2)
    start = seeded_global_weights(method, 6, 3, cfg, seed=0)
    run = run_vectorized if vectorized else run_federation
    weights, history = run(clients, start, Rounds(cfg.n_rounds))
    return clients, weights, history


def _params_of(models) -> list[torch.Tensor]:
    return [p.detach() for m in models for p in m.parameters()]


def _params(client) -> list[torch.Tensor]:
    if hasattr(client, "model"):
        return _params_of([client.model])
    return _params_of([client.generator, client.discriminator])


def _adam_steps(client) -> list[float]:
    opts = [client.optimizer] if hasattr(client, "optimizer") else [client.opt_g, client.opt_d]
    return [float(s["step"]) for opt in opts for s in opt.state.values()]


# (the CGAN without DP adds nothing that the CGAN's generator and the CVAE without DP do not test)
@pytest.mark.parametrize(("method", "dp"), [("dpcvae", True), ("dpcvae", False), ("dpcgan", True)])
def test_vectorized_training_equals_per_client_training(method, dp):
    """Rounds of local epochs, clients of different sizes, sampling rates and noise multipliers
    (so different step counts per round): same shared weights, same client states, same losses
    up to rounding; same accounting exactly; same random streams and Adam counters afterwards.

    Measured differences (largest over tensors, relative to each tensor's largest entry): the
    DP-trained networks (the CVAE, the CGAN's discriminator) ~1e-7 after 6 rounds x epochs; the
    CGAN's generator (no clipping, no noise: Adam's normalization amplifies rounding) and any
    network trained without DP up to ~1e-5."""
    dp_cfg = DP if dp else DPConfig(enabled=False)
    # the CGAN's layers are 512-1024 wide whatever the data: fewer rounds keep the test short
    cfg = CFG if method == "dpcvae" else GenerativeConfig(n_rounds=2, local_epochs=1, batch_size=8)
    (ref, w_ref, h_ref), (vec, w_vec, h_vec) = (
        _train(method, v, dp_cfg, cfg) for v in (False, True)
    )
    tight = 1e-6 if dp else 2e-5  # the DP-trained network
    loose = tight if method == "dpcvae" else 2e-5  # the shared network
    if dp:
        sigmas = {c.dp_sgd.noise_multiplier for c in ref}
        assert len(sigmas) == 3
    for k in w_ref:
        assert _rel(w_ref[k], w_vec[k]) <= loose, k
    for a, b in zip(ref, vec):
        private = [a.model] if method == "dpcvae" else [a.discriminator]
        private_b = [b.model] if method == "dpcvae" else [b.discriminator]
        for p, q in zip(_params_of(private), _params_of(private_b)):
            assert _rel(p, q) <= tight
        for p, q in zip(_params(a), _params(b)):
            assert _rel(p, q) <= loose
        assert a.privacy() == b.privacy()  # accountant history and epsilon: identical
        for name in ("rng_batches", "rng_noise", "rng_latent"):
            assert torch.equal(getattr(a, name).get_state(), getattr(b, name).get_state())
        assert _adam_steps(a) == _adam_steps(b) and min(_adam_steps(a)) > 0
    assert [set(r) for r in h_ref] == [set(r) for r in h_vec]
    for r, v in zip(h_ref, h_vec):
        for key in r:
            assert r[key] == pytest.approx(v[key], rel=1e-6), key
            if key.startswith("epsilon"):
                assert r[key] == v[key]


def test_vectorized_training_supports_every_cvae_option():
    cfg = GenerativeConfig(
        n_rounds=2,
        local_epochs=1,
        batch_size=0,  # the whole client: one step per epoch, sampling rate 1
        hidden_dim=8,
        latent_dim=3,
        cvae_loss="elbo",
        cvae_layers=0,
        encoder_scale=0.1,
        cvae_lr=1e-2,
    )
    (ref, w_ref, _), (vec, w_vec, _) = (_train("dpcvae", v, DP, cfg) for v in (False, True))
    for k in w_ref:
        assert _rel(w_ref[k], w_vec[k]) <= 1e-6
    assert [c.privacy() for c in ref] == [c.privacy() for c in vec]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from helpers.databases import make_gaussian_db

    return make_gaussian_db(tmp_path_factory.mktemp("vectorized") / "db", n_per_file=(300,))


def gen_flags(method: str) -> list[str]:
    """The method's tiny flags, in batches of 32 (several padded Poisson batches per epoch, not
    one of the whole client) and with the RDP accountant (it calibrates in milliseconds)."""
    return [*FAST, *tiny(method, gen_batch_size=32, accountant="rdp")]


def _close(a, b, path=""):
    """Equal structure; floats equal to 1e-6 relative (1e-9 absolute), everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("method", ["dpcvae", pytest.param("dpcgan", marks=pytest.mark.slow)])
def test_whole_run_gives_the_per_client_metrics(db, tmp_path, method):
    """3 clients, 2 rounds, main.py: metrics.json of both paths agree on every key (the wall
    time aside), floats to 1e-6 relative, the privacy block exactly; config.json records the
    path."""
    out = {}
    for path in ("off", "on"):
        argv = ["--database_root", db, "--results_dir", tmp_path / path, "--method", method]
        argv += [*gen_flags(method), "--vectorized", path, "--device", "cpu"]
        assert main_module.main(argv) == 0
        out[path] = json.loads((tmp_path / path / "metrics.json").read_text())
        out[path]["cost"].pop("wall_seconds")
        config = json.loads((tmp_path / path / "config.json").read_text())
        assert config["execution"] == {"device": "cpu", "vectorized": path == "on"}
    assert out["off"]["privacy"] == out["on"]["privacy"]
    _close(out["off"], out["on"])


def test_device_and_vectorized_flags(db, tmp_path, capsys):
    base = ["--database_root", db, "--results_dir", tmp_path / "r", *TINY["local"], *FAST]
    assert main_module.main([*base, "--method", "local", "--vectorized", "on"]) == 2
    assert "--vectorized does not apply to --method local" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main_module.main([*base, "--method", "local", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "CUDA is not available" in err and len(err.splitlines()) == 1
    assert main_module.main([*base, "--method", "local", "--device", "cpu"]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["execution"] == {"device": "cpu", "vectorized": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_cuda_vectorized_equals_cuda_per_client_and_matches_cpu_statistically(method):
    """On CUDA both paths draw from the same CUDA generators: equal up to rounding. Against the
    CPU run (other draws) the accounting is identical and the losses are alike."""
    data = [_data(n, i) for i, n in enumerate(SIZES)]
    runs = {}
    for device, vectorized in (("cuda", False), ("cuda", True), ("cpu", False)):
        clients = make_clients(
            method=method, clients=data, n_classes=3, cfg=CFG, dp=DP, seed=2, device=device
        )
        start = seeded_global_weights(method, 6, 3, CFG, seed=0)
        run = run_vectorized if vectorized else run_federation
        weights, history = run(clients, start, Rounds(CFG.n_rounds))
        runs[device, vectorized] = ({k: v.cpu() for k, v in weights.items()}, history, clients)
    (w_ref, _, c_ref), (w_vec, h_vec, c_vec) = runs["cuda", False], runs["cuda", True]
    for k in w_ref:
        assert _rel(w_ref[k], w_vec[k]) <= 1e-5, k
    assert [c.privacy() for c in c_ref] == [c.privacy() for c in c_vec]
    w_cpu, h_cpu, c_cpu = runs["cpu", False]
    assert [c.privacy()["epsilon"] for c in c_cpu] == [c.privacy()["epsilon"] for c in c_vec]
    for a, b in zip(h_cpu, h_vec):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.2)
