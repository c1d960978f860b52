"""DP-FedAvg (`--method dpfedavg`): the FedAvg head trained with DP-SGD at each client, through
main.py with tiny flags and client by client."""

import numpy as np
import pytest
import torch
from helpers.databases import make_gaussian_db
from helpers.tiny import FAST, tiny

import main as main_module
from algorithms.methods.dpfedavg import DPFedAvgClient
from algorithms.methods.fedavg import FedAvgConfig, initial_head
from algorithms.privacy.accounting import epsilon_from_history
from algorithms.privacy.config import DPConfig
from data.clients import ClientData
from utils.results import read_metrics


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_gaussian_db(tmp_path_factory.mktemp("dpfedavg") / "db", n_per_file=(400,))


def run(db, out, *extra):
    argv = ["--database_root", str(db), "--results_dir", str(out), *FAST]
    return main_module.main([*argv, "--method", "dpfedavg", *tiny("dpfedavg"), *extra])


def client_data(n=60, dim=5, patients=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n + 4, dim)).astype(np.float32)
    y = rng.integers(0, 3, size=n + 4)
    return ClientData(0, x[:n], y[:n], x[n:], y[n:], x[n:], y[n:], patients)


def test_a_run_reports_the_epsilon_its_accountant_spent_within_the_target(db, tmp_path):
    assert run(db, tmp_path / "r", "--bz", "32") == 0
    metrics = read_metrics(tmp_path / "r")
    privacy = metrics["privacy"]
    assert metrics["private"] is True and privacy["enabled"] and privacy["target_epsilon"] == 1
    assert len(privacy["clients"]) == 3
    for line in privacy["clients"]:
        history = [tuple(h) for h in line["accountant_history"]]
        spent = epsilon_from_history(privacy["accountant"], history, privacy["delta"])
        assert line["epsilon"] == pytest.approx(spent)
        assert 0.9 < line["epsilon"] <= 1.0  # calibrated for the whole run: spent, not exceeded
        # every DP step of the run: 2 rounds x 5 local epochs x ceil(1 / sample rate) steps
        steps_epoch = round(1 / line["sample_rate"])
        assert line["steps"] == 2 * 5 * steps_epoch and steps_epoch > 1
    assert privacy["epsilon_max"] == max(c["epsilon"] for c in privacy["clients"])


def test_dp_off_shares_without_dp_and_says_so(db, tmp_path):
    assert run(db, tmp_path / "off", "--dp", "off") == 0
    metrics = read_metrics(tmp_path / "off")
    assert metrics["private"] is False and metrics["privacy"]["enabled"] is False
    assert all(c["epsilon"] is None for c in metrics["privacy"]["clients"])


TWO_ROUNDS = FedAvgConfig(n_rounds=2, local_steps=2, batch_size=16)


def fitted(dp, cfg=TWO_ROUNDS, data=None):
    client = DPFedAvgClient(data=data or client_data(), n_classes=3, cfg=cfg, dp=dp, seed=7)
    update = client.fit(initial_head(5, 3, 0), 0)
    return client, update


def test_a_round_releases_the_head_and_the_noisy_count_with_its_epsilon():
    client, update = fitted(DPConfig(epsilon=1.0, count_noise=5.0))
    assert update.n_samples == client.n_released != client.n  # the FedAvg weight is noisy
    assert 0 < update.metrics["epsilon"] < 1.0  # one of two rounds spent
    assert set(update.weights) == {"weight", "bias"}
    start = initial_head(5, 3, 0)
    assert not torch.equal(update.weights["weight"], start["weight"])
    _, again = fitted(DPConfig(epsilon=1.0, count_noise=5.0))  # seeded noise: reproducible
    assert torch.equal(update.weights["weight"], again.weights["weight"])


def test_secure_noise_is_not_reproducible_from_the_seed():
    dp = DPConfig(epsilon=1.0, noise_source="secure")
    (_, a), (_, b) = fitted(dp), fitted(dp)
    assert not torch.equal(a.weights["weight"], b.weights["weight"])


def test_the_noise_is_calibrated_for_every_round_of_the_run():
    """A run of 4 rounds takes more noise per step than one of 2 (same target)."""
    dp = DPConfig(epsilon=1.0)
    short, _ = fitted(dp)
    long, _ = fitted(dp, FedAvgConfig(n_rounds=4, local_steps=2, batch_size=16))
    assert long.total_steps == 2 * short.total_steps
    assert long.calibration[1] > short.calibration[1]


def test_patient_ids_make_the_patient_the_unit():
    data = client_data(patients=np.repeat(np.arange(20), 3))
    client, update = fitted(DPConfig(epsilon=1.0), data=data)
    assert client.unit == "patient" and client.privacy()["unit"] == "patient"
    assert client.n_units == 20 and np.isfinite(update.metrics["train_loss"])
