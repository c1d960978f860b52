"""The audit at the patient level: canary patients of several records (`--canary_records`), new
patients where the data has ids, and the bound per patient against the per-patient epsilon
(the accountant's at the patient unit, the group bound at the record unit)."""

import math

import numpy as np
import pytest
from helpers.databases import make_patient_db
from helpers.tiny import FAST, TINY

import main as main_module
from algorithms.privacy.accounting import group_bound
from algorithms.privacy.audit import canaries, cli
from data.clients import ClientData
from utils.results import read_metrics

AUDIT = ["--n_canaries", "8", "--n_latent", "64", "--canary_records", "3", "--quiet"]


def test_canary_patients_are_new_patients_of_k_records():
    x = np.zeros((4, 2))
    y = np.array([0, 1, 0, 1])
    with_ids = ClientData(0, x, y, x, y, x, y, np.array([5, 5, 9, 9]))
    c = canaries.with_canaries(with_ids, np.eye(2), 1, records=3)
    assert c.n_train == 10 and c.y_train[4:].tolist() == [1] * 6
    assert c.patients_train.tolist() == [5, 5, 9, 9, 10, 10, 10, 11, 11, 11]
    np.testing.assert_array_equal(c.x_train[4:7], np.repeat(np.eye(2)[:1], 3, 0))
    # no ids: each record stays its own patient (the run's record unit is kept)
    assert (
        canaries.with_canaries(ClientData(0, x, y, x, y, x, y), np.eye(2), 1).patients_train is None
    )


def test_a_canary_s_bound_is_the_record_s_or_the_group_bound():
    assert canaries.canary_bound(0.7, 1e-4, 1) == (0.7, 1e-4)
    assert canaries.canary_bound(0.7, 1e-4, 3) == group_bound(0.7, 1e-4, 3)
    assert canaries.canary_bound(1.0, 1e-4, 50) == (None, 1e-4)  # delta >= 1: says nothing
    assert canaries.canary_bound(None, 1e-4, 3) == (None, 1e-4)


@pytest.mark.parametrize("unit", ["patient", "record"])
def test_the_bound_per_canary_patient_stays_below_the_reported_epsilon(tmp_path, capsys, unit):
    db = make_patient_db(tmp_path / "db")
    run = tmp_path / "run"
    argv = ["--database_root", str(db), "--results_dir", str(run), *FAST, "--method", "dpcvae"]
    assert main_module.main([*argv, *TINY["dpcvae"], "--privacy_unit", unit]) == 0
    capsys.readouterr()
    assert cli.main([str(run), *AUDIT]) == 0
    out = capsys.readouterr().out
    assert "canary patients of 3 records" in out and "bounds per patient" in out
    metrics = read_metrics(run)
    a = metrics["audit"]
    assert a["unit"] == unit and a["canary_unit"] == "patient" and a["canary"]["records"] == 3
    lines = {c["id"]: c for c in metrics["privacy"]["clients"]}
    reported = lines[a["target_client"]]["epsilon"]
    if unit == "patient":  # the accountant's epsilon is per patient already
        assert a["group_k"] == 1 and a["epsilon_reported"] == reported
    else:  # per record: a patient of 3 records has the group bound
        assert a["group_k"] == 3 and math.isclose(a["epsilon_reported"], 3 * reported)
        spent_record = a["epsilon_spent"] / 3  # in the audited training (with the canaries)
        assert math.isclose(a["delta"], group_bound(spent_record, 1e-4, 3)[1])
    for attack in a["attacks"].values():
        assert 0.0 <= attack["eps_lb"] <= min(a["epsilon_spent"], a["epsilon_reported"])
