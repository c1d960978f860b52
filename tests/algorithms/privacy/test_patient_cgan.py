"""DP-CGAN at the patient unit: its discriminator's DP step clips each sampled patient's summed
gradient as one group and each fake sample alone (CGANClient._groups), the accountant's rate is
per patient, and a run with --privacy_unit patient on data with patient ids is per patient."""

import copy

import numpy as np
import torch
from helpers.databases import make_patient_db
from helpers.tiny import FAST, TINY

import main as main_module
from algorithms.methods import dpcgan
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.generative import seeded_global_weights
from algorithms.privacy.accounting import sample_rate_for
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.ghost_clipping import clip_and_sum_linear
from data.clients import ClientData
from data.features import standardize_records
from utils.results import read_metrics

CFG = GenerativeConfig(n_rounds=1, local_epochs=2, batch_size=4, latent_dim=4)
C = 1e-3  # below every per-sample gradient norm: each record clipped per record moves it by C
MANY = 40  # the records of the large patient, all identical


def _client(unit: str) -> CGANClient:
    """8 patients of one record each, and patient 8 with 40 copies of one record."""
    rng = np.random.default_rng(0)
    x = standardize_records(rng.normal(size=(9, 6)))
    x = np.concatenate([x[:8], np.repeat(x[8:], MANY, axis=0)])
    y = np.concatenate([rng.integers(0, 3, size=8), np.full(MANY, 1)])
    patients = np.concatenate([np.arange(8), np.full(MANY, 8)])
    data = ClientData(0, x, y, x[:2], y[:2], x[:2], y[:2], patients)
    # an exact count: the rates are checked below
    dp = DPConfig(epsilon=2.0, max_grad_norm=C, privacy_unit=unit, accountant="rdp", count_noise=0)
    return CGANClient(data=data, n_classes=3, cfg=CFG, dp=dp, seed=0)


def _clipped_sums(client: CGANClient, monkeypatch, batches: list[torch.Tensor]) -> list:
    """The discriminator's clipped sum (and the groups) of `_step` on each batch, every step from
    the same generator and latent draws (the same fake samples), no update taken."""
    seen = []

    def spy(state, loss, groups=None):
        clip_and_sum_linear(state.tape.take(), loss, state.optimizer.max_grad_norm, groups)
        grad = torch.cat([p.grad.flatten() for p in client.discriminator.parameters()])
        seen.append((grad.clone(), groups))

    monkeypatch.setattr(dpcgan, "dp_step", spy)
    generator = copy.deepcopy(client.generator.state_dict())
    latent = client.rng_latent.get_state()
    for idx in batches:
        client.generator.load_state_dict(generator)
        client.rng_latent.set_state(latent)
        if client.patients is not None:  # what _batches sets with the batch
            client.groups = torch.unique(client.patients[idx], return_inverse=True)[1]
        client._step(idx)
    return seen


def test_a_patient_with_many_identical_records_moves_the_discriminators_sum_by_at_most_c(
    monkeypatch,
):
    client = _client("patient")
    n_fake = client.n_fake(0)
    everyone, without = torch.arange(8 + MANY), torch.arange(8)
    (with_patient, groups), (alone, _) = _clipped_sums(client, monkeypatch, [everyone, without])
    assert (with_patient - alone).norm() <= C * (1 + 1e-4)
    # the groups: each real record's patient, then each fake sample alone
    expected = torch.cat([torch.arange(8), torch.full((MANY,), 8), torch.arange(9, 9 + n_fake)])
    assert torch.equal(groups, expected)
    # per record, the same patient moves the sum by about 40 C
    record = _client("record")
    (with_records, none), (alone, _) = _clipped_sums(record, monkeypatch, [everyone, without])
    assert none is None and (with_records - alone).norm() > 10 * C


def test_fake_samples_are_groups_of_their_own_even_in_an_empty_batch():
    client = _client("patient")
    client.groups = torch.zeros(0, dtype=torch.int64)
    assert client._groups(3).tolist() == [0, 1, 2]
    client.groups = torch.tensor([0, 0, 1])
    assert client._groups(2).tolist() == [0, 0, 1, 2, 3]
    assert _client("record")._groups(2) is None


def test_a_cgan_client_at_the_patient_unit_accounts_patients():
    client = _client("patient")
    assert (client.n, client.n_units, client.n_released) == (48, 9, 9)
    client.fit(seeded_global_weights("dpcgan", 6, 3, CFG, seed=0), 0)
    # the generator's steps through the discriminator are not private steps: nothing recorded
    assert client.dp_sgd.tape is not None and client.dp_sgd.tape.records == []
    line = client.privacy()
    rate = sample_rate_for(9, CFG.batch_size)
    assert line["unit"] == "patient" and line["sample_rate"] == rate == 1 / 3
    assert line["steps"] == 2 * client.steps_epoch and 0 < line["epsilon"] <= 2.0
    # the fake samples: as many as the expected number of patients per batch
    assert client.n_fake(0) == 3
    record = _client("record")
    assert "unit" not in record.privacy() and record.n_released == 48  # counts records
    assert record.dp_sgd.sample_rate == sample_rate_for(48, 4) and record.n_fake(0) == 4


def test_a_dpcgan_run_with_privacy_unit_patient_is_private_per_patient(tmp_path, capsys):
    db = make_patient_db(tmp_path / "db")
    run = tmp_path / "run"
    argv = ["--database_root", str(db), "--results_dir", str(run), *FAST, "--method", "dpcgan"]
    assert main_module.main([*argv, *TINY["dpcgan"], "--privacy_unit", "patient"]) == 0
    printed = capsys.readouterr()
    privacy = read_metrics(run)["privacy"]
    assert privacy["unit"] == "patient" and "group_privacy" not in privacy
    assert all(c["unit"] == "patient" and c["n_released"] < 60 for c in privacy["clients"])
    assert 0 < privacy["epsilon_max"] <= privacy["target_epsilon"]
    assert "per patient (delta 0.0001); " in printed.out and "not per patient" not in printed.err
