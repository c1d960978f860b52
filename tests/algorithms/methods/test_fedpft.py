"""FedPFT and DP-FedPFT: the calibration of the one release against independent computations,
the exact statistics without noise, a class of one record, what leaves a client (every released
number noised, nothing else depending on the data), main.py end to end, and refused flags."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant

import main as main_module
from algorithms.evaluation.heads import HeadConfig
from algorithms.methods.fedpft import PFTClient, make_pft_clients, run_pft
from algorithms.methods.gaussians import VARIANCE_FLOOR, class_statistics, noisy_statistics
from algorithms.methods.pft_config import PFTConfig, release_size, sensitivity
from algorithms.methods.pft_server import pooler
from algorithms.privacy.accounting import (
    ANALYTIC_GAUSSIAN,
    NOT_COVERED,
    calibrate_release,
    privacy_report,
    release_epsilon,
)
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import standardize_records
from utils.collect import collect
from utils.results import read_metrics

GEN = GenerativeConfig()
# DP as main.py's flags make it for dpfedpft: no DP-SGD settings
DP = DPConfig(max_grad_norm=None, accountant=None, calibration=None)
HEAD = HeadConfig(epochs=5)
N_CLASSES, DIM = 3, 6


def _client(cid=0, n=60, seed=0, y=None) -> ClientData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, size=(N_CLASSES, DIM))
    y = rng.integers(0, N_CLASSES, size=n) if y is None else np.asarray(y)
    u = standardize_records(centers[y] + rng.normal(size=(len(y), DIM)))
    return ClientData(cid, u, y, u[:6], y[:6], u[:6], y[:6])


def _delta(sigma: float, eps: float) -> float:
    """Balle & Wang's exact delta, written independently (math.erf, no scipy)."""

    def phi(t):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))

    return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 8.0])
def test_the_noise_is_the_least_that_meets_the_target_and_prv_agrees(epsilon):
    sigma = calibrate_release(DPConfig(epsilon=epsilon, delta=1e-5))
    # (epsilon, delta)-DP at sigma, and not at a noise 1e-6 smaller: the calibration is tight
    assert _delta(sigma, epsilon) <= 1e-5 < _delta(sigma * (1 - 1e-6), epsilon)
    spent = release_epsilon(sigma, 1e-5)
    assert spent <= epsilon and spent == pytest.approx(epsilon, abs=1e-8)
    prv = PRVAccountant()  # one Gaussian mechanism: sampling rate 1, one step
    prv.history = [(sigma, 1.0, 1)]
    eps_prv = prv.get_epsilon(delta=1e-5)
    assert spent - 1e-6 <= eps_prv <= spent + 0.02  # PRV: an upper bound, within its grid


def test_the_privacy_block_reports_each_release_as_the_analytic_gaussian_spends_it():
    clients = [_client(i, seed=i) for i in range(3)]
    out = run_pft(
        method="dpfedpft",
        clients=clients,
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        dp=DP,
        head_cfg=HEAD,
        seed=1,
    )
    report = out.privacy
    assert report["enabled"] and report["accountant"] == "analytic-gaussian"
    assert report["max_grad_norm"] is None and report["calibration"] is None
    for line in report["clients"]:
        assert line["sensitivity"] == math.sqrt(3)
        assert line["noise_std"] == pytest.approx(line["noise_multiplier"] * math.sqrt(3))
        assert line["epsilon"] == release_epsilon(line["noise_multiplier"], 1e-4) <= 1.0
        assert _delta(line["noise_multiplier"], line["epsilon"]) <= 1e-4
    assert report["epsilon_max"] == max(c["epsilon"] for c in report["clients"])
    assert out.history == [
        {"round": 1, "clients": 3, "epsilon_max": report["epsilon_max"]}
        | {f"epsilon_client{i}": c["epsilon"] for i, c in enumerate(report["clients"])}
    ]
    assert out.params_shared == release_size("dpfedpft", PFTConfig(), DIM, N_CLASSES)
    assert np.isfinite(out.fidelity["wasserstein_mean"])


def _pooled_truth(clients):
    x = np.concatenate([c.x_train for c in clients]).astype(np.float64)
    y = np.concatenate([c.y_train for c in clients])
    means = np.stack([x[y == k].mean(0) for k in range(N_CLASSES)])
    covs = np.stack([np.cov(x[y == k].T, bias=True) for k in range(N_CLASSES)])
    return means, covs


def _release_and_pool(method, cfg, clients, dp):
    pft = make_pft_clients(
        method=method, clients=clients, n_classes=N_CLASSES, cfg=cfg, gen_cfg=GEN, dp=dp, seed=5
    )
    updates = [c.fit({}, 0) for c in pft]
    return updates, pooler(method, cfg, dp)(updates)


@pytest.mark.parametrize("covariance", ["diag", "full", "spherical"])
def test_without_noise_the_pooled_gaussians_are_the_pooled_data_s(covariance):
    clients = [_client(i, seed=i) for i in range(3)]
    means, covs = _pooled_truth(clients)
    cfg = PFTConfig(covariance=covariance)
    _, pooled = _release_and_pool("dpfedpft", cfg, clients, DPConfig(enabled=False))
    assert torch.equal(pooled["weights"], torch.ones(N_CLASSES, 1))
    np.testing.assert_allclose(pooled["means"][:, 0], means, rtol=1e-5, atol=1e-5)
    s = pooled["scales"][:, 0].double().numpy()
    if covariance == "diag":
        variances = np.maximum(np.diagonal(covs, axis1=1, axis2=2), VARIANCE_FLOOR)
        np.testing.assert_allclose(s**2, variances, rtol=1e-4, atol=1e-5)
    elif covariance == "full":
        # standardized records sum to 0: the covariance is singular along (1, ..., 1), where
        # the floor makes it positive definite
        values, vectors = np.linalg.eigh(covs)
        assert values.min() < 1e-9 and np.sort(values, 1)[:, 1].min() > VARIANCE_FLOOR
        floored = np.einsum("cij,cj,ckj->cik", vectors, np.maximum(values, VARIANCE_FLOOR), vectors)
        np.testing.assert_allclose(s @ s.transpose(0, 2, 1), floored, rtol=1e-4, atol=1e-5)
    else:  # every record has squared norm D: the mean variance per dimension
        np.testing.assert_allclose(s[:, 0] ** 2, np.trace(covs, axis1=1, axis2=2) / DIM, rtol=1e-4)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_fedpft_fits_each_client_s_class_gaussians_and_pools_their_mixture(covariance):
    clients = [_client(i, seed=i) for i in range(3)]
    cfg = PFTConfig(components=1, covariance=covariance)
    updates, pooled = _release_and_pool("fedpft", cfg, clients, None)
    for c, u in zip(clients, updates):  # K = 1: the client's class mean and covariance
        means, covs = _pooled_truth([c])
        s = u.weights["scales"][:, 0].double().numpy()
        fitted = s @ s.transpose(0, 2, 1) if covariance == "full" else s**2
        truth = covs if covariance == "full" else np.diagonal(covs, axis1=1, axis2=2)
        truth = truth + 1e-6 * (np.eye(DIM) if covariance == "full" else 1.0)  # reg_covar
        np.testing.assert_allclose(u.weights["means"][:, 0], means, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fitted, truth, rtol=1e-4, atol=1e-5)
        assert u.n_samples == 0 and u.metrics == {}
    # the pooled mixture's mean and covariance are the pooled data's (law of total covariance)
    means, covs = _pooled_truth(clients)
    w = pooled["weights"].double().numpy()
    mu, s = pooled["means"].double().numpy(), pooled["scales"].double().numpy()
    comp = np.einsum("cmij,cmkj->cmik", s, s) if covariance == "full" else _diag(s**2)
    mean = np.einsum("cm,cmd->cd", w, mu)
    second = np.einsum("cm,cmij->cij", w, comp + np.einsum("cmi,cmj->cmij", mu, mu))
    np.testing.assert_allclose(mean, means, rtol=1e-5, atol=1e-5)
    cov = second - np.einsum("ci,cj->cij", mean, mean)
    truth = covs + 1e-6 * np.eye(DIM)
    if covariance == "diag":  # diagonal components model the variances only
        cov, truth = (np.diagonal(c, axis1=1, axis2=2) for c in (cov, truth))
    np.testing.assert_allclose(cov, truth, rtol=1e-4, atol=1e-5)


def _diag(v):
    return np.einsum("cmi,ij->cmij", v, np.eye(v.shape[-1]))


@pytest.mark.parametrize("method", ["fedpft", "dpfedpft"])
def test_a_class_of_one_record_works(method):
    lonely = _client(0, y=[0] * 30 + [1] * 29 + [2])
    others = [_client(1, seed=1), _client(2, seed=2)]
    dp = DPConfig(epsilon=8.0) if method == "dpfedpft" else None
    for covariance in ("diag", "full", "spherical"):
        cfg = PFTConfig(components=2, covariance=covariance)
        out = run_pft(
            method=method,
            clients=[lonely, *others],
            n_classes=N_CLASSES,
            cfg=cfg,
            gen_cfg=GEN,
            dp=dp,
            head_cfg=HEAD,
            seed=0,
        )
        assert np.isfinite(out.fidelity["wasserstein_mean"]) and len(out.local) == 3
    release = make_pft_clients(
        method="fedpft",
        clients=[lonely],
        n_classes=N_CLASSES,
        cfg=PFTConfig(2),
        gen_cfg=GEN,
        dp=None,
        seed=0,
    )[0]
    update = release.fit({}, 0)
    # fewer records than components: one Gaussian, at the record, of variance reg_covar
    assert update.weights["weights"][2].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(update.weights["means"][2, 0], lonely.x_train[-1], rtol=1e-6)
    np.testing.assert_allclose(update.weights["scales"][2, 0], 1e-3, rtol=1e-5)


def test_a_release_is_made_once():
    client = make_pft_clients(
        method="dpfedpft",
        clients=[_client()],
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        dp=DPConfig(),
        seed=0,
    )
    client = client[0]
    assert client.epsilon() == 0.0
    client.fit({}, 0)
    with pytest.raises(RuntimeError, match="releases once"):
        client.fit({}, 0)
    restored = PFTClient(
        method="dpfedpft",
        data=_client(),
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        dp=DPConfig(),
        seed=0,
    )
    restored.load_state_dict(client.state_dict())
    assert restored.privacy() == client.privacy()
    with pytest.raises(RuntimeError, match="releases once"):
        restored.fit({}, 0)


def _scaled_norm(diff: dict, dim: int) -> float:
    parts = [diff["count"], diff["sum"] / math.sqrt(dim)]
    if "moment" in diff:
        parts.append(diff["moment"] / dim)
    return float(math.sqrt(sum(float((p**2).sum()) for p in parts)))


@pytest.mark.parametrize("covariance", ["diag", "full", "spherical"])
def test_neighbours_differ_only_by_their_exact_statistics_within_the_sensitivity(covariance):
    """One record removed, the same noise draws: what leaves the client differs exactly by the
    difference of the exact statistics, whose scaled norm is at most the stated sensitivity;
    the rest of the reply is the same. Every released number is noised."""
    data = _client(n=40)
    # the removed record is its class's only one: that class is released as noise only
    y = data.y_train.copy()
    y[y == 2] = 1
    y[-1] = 2
    full = ClientData(0, data.x_train, y, data.x_val, data.y_val, data.x_test, data.y_test)
    x = full.x_train.copy()
    x[-1] = 0.0  # a worst case: all its mass on one dimension, norm sqrt(D)
    x[-1, 0] = math.sqrt(DIM)
    full = ClientData(0, x, y, data.x_val, data.y_val, data.x_test, data.y_test)
    minus = ClientData(0, x[:-1], y[:-1], data.x_val, data.y_val, data.x_test, data.y_test)
    std = 0.7

    def release(d):
        rng = torch.Generator().manual_seed(11)
        return noisy_statistics(
            x=d.x_train,
            y=d.y_train,
            n_classes=N_CLASSES,
            covariance=covariance,
            noise_std=std,
            rng=rng,
        )

    a, b = release(full), release(minus)
    ea, eb = (class_statistics(d.x_train, d.y_train, N_CLASSES, covariance) for d in (full, minus))
    assert a.keys() == b.keys() == ea.keys()
    diff = {k: a[k] - b[k] for k in a}
    for k in a:
        torch.testing.assert_close(diff[k], ea[k] - eb[k], rtol=0, atol=1e-9)
        assert (a[k] != ea[k]).all(), f"{k}: a released number without noise"
    norm = _scaled_norm(diff, DIM)
    assert norm <= sensitivity(covariance) + 1e-9
    assert norm == pytest.approx(sensitivity(covariance))  # this record attains the bound
    # the reply of the client object: same keys, shapes, sample count (0) and metrics
    cfg, dp = PFTConfig(covariance=covariance), DPConfig(epsilon=2.0)
    ua, ub = (
        PFTClient(
            method="dpfedpft", data=d, n_classes=N_CLASSES, cfg=cfg, gen_cfg=GEN, dp=dp, seed=3
        ).fit({}, 0)
        for d in (full, minus)
    )
    assert (ua.n_samples, ua.metrics) == (ub.n_samples, ub.metrics) == (0, ua.metrics)
    assert {k: v.shape for k, v in ua.weights.items()} == {
        k: v.shape for k, v in ub.weights.items()
    }
    for k in ua.weights:
        expected = (ea[k] - eb[k]).float()
        torch.testing.assert_close(ua.weights[k] - ub.weights[k], expected, rtol=0, atol=1e-3)


def test_main_runs_both_methods_to_a_valid_metrics_file(gauss_db, tmp_path):
    base = ["--database_root", str(gauss_db), "--n_clients", "3", "--quiet", "--local_epochs", "5"]
    runs = {
        "fedpft": ["--method", "fedpft", "--pft_components", "2"],
        "dpfedpft": ["--method", "dpfedpft", "--epsilon", "2", "--pft_covariance", "spherical"],
    }
    for name, flags in runs.items():
        assert main_module.main([*base, *flags, "--results_dir", str(tmp_path / name)]) == 0
        m = read_metrics(tmp_path / name)  # validated against the schema
        assert m["method"] == name and len(m["clients"]) == 3 and m["lambda"] is not None
        assert m["cost"]["params_shared"] > 0 and np.isfinite(m["fidelity"]["wasserstein_mean"])
    pft, dp = read_metrics(tmp_path / "fedpft"), read_metrics(tmp_path / "dpfedpft")
    assert pft["privacy"] is None and not pft["private"]
    assert dp["private"] and dp["privacy"]["epsilon_max"] <= 2.0
    assert dp["cost"]["params_shared"] == 4 * (1 + 16)  # count and sum per class, no moment
    eps = {r["method"]: r["epsilon_spent"] for r in collect([tmp_path])}
    assert eps == {"fedpft": math.inf, "dpfedpft": dp["privacy"]["epsilon_max"]}


@pytest.mark.parametrize(
    ("method", "flags", "needle"),
    [
        ("dpfedpft", ["--pft_components", "2"], "(it is used by fedpft)"),
        ("dpfedpft", ["--max_grad_norm", "1"], "(it is used by dpfedavg, dpcgan, dpcvae)"),
        ("dpfedpft", ["--accountant", "rdp"], "(it is used by dpfedavg, dpcgan, dpcvae)"),
        ("fedpft", ["--epsilon", "1"], "(it is used by dpfedavg, dpcgan, dpcvae, dpfedpft)"),
        ("fedpft", ["--n_fedavg_rounds", "2"], "(it is used by dpcgan, dpcvae)"),
        ("dpcvae", ["--pft_covariance", "full"], "(it is used by fedpft, dpfedpft)"),
        ("fedpft", ["--pft_components", "0"], "--pft_components must be >= 1, got 0"),
        ("dpfedpft", ["--epsilon", "0"], "--epsilon must be a positive number"),
    ],
)
def test_bad_flags_are_refused_with_one_line(tmp_path, capsys, method, flags, needle):
    out = tmp_path / "run"
    argv = ["--database_root", str(tmp_path), "--results_dir", str(out), "--method", method]
    assert main_module.main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("source", ["seeded", "secure"])
def test_each_release_records_the_noise_source_its_client_used(source):
    """Each dpfedpft line of the privacy report names the noise source of its own client; the
    block's is theirs, whatever the coordinator's configuration says."""
    dp = dataclasses.replace(DP, noise_source=source)
    clients = [_client(i, seed=i) for i in range(2)]
    out = run_pft(
        method="dpfedpft",
        clients=clients,
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        dp=dp,
        head_cfg=HEAD,
        seed=1,
    )
    assert [line["noise_source"] for line in out.privacy["clients"]] == [source, source]
    assert out.privacy["noise_source"] == source
    pft = make_pft_clients(
        method="dpfedpft",
        clients=clients,
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        dp=dp,
        seed=1,
    )
    lines = [c.privacy() for c in pft]
    # a site keyed by its secret is reported as secure even if the coordinator ran seeded
    report = privacy_report(DP, lines, ANALYTIC_GAUSSIAN, NOT_COVERED)
    assert report["noise_source"] == source
    assert (report["noise_caveat"] is None) == (source == "secure")
