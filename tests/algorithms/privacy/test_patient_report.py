"""The privacy report's unit: epsilon per record; on data with patient ids the patients and the
group-privacy bound for the largest one, a warning, and the run's privacy line."""

import math

import numpy as np
import pytest
from helpers.databases import make_gaussian_db, make_patient_db
from helpers.tiny import FAST, TINY

import main as main_module
from algorithms.options import load_settings
from algorithms.privacy.accounting import group_bound, group_privacy_warning, with_patients
from algorithms.report import privacy_line
from algorithms.run_files import DataFacts, describe_run
from data.patients import patient_facts
from utils.collect import collect
from utils.results import config_key, read_metrics
from utils.table import to_markdown

REPORT = {"enabled": True, "epsilon_max": 1.0, "delta": 1e-4, "unit": "record"}


def test_group_bound_is_k_eps_and_k_e_to_the_k_minus_1_eps_delta():
    assert group_bound(0.5, 1e-5, 1) == (0.5, 1e-5)
    eps, delta = group_bound(1.0, 1e-4, 50)
    assert eps == 50.0 and math.isclose(delta, 50 * math.exp(49) * 1e-4)


def test_with_patients_adds_the_facts_and_the_largest_patients_bound():
    facts = patient_facts(np.array([0, 0, 0, 1, 2, 2]))
    report = with_patients(REPORT, facts)
    assert report["patients"]["n_patients"] == 3 and report["unit"] == "record"
    assert report["group_privacy"] == {"k": 3, "epsilon": 3.0, "delta": 3 * math.exp(2) * 1e-4}
    warning = group_privacy_warning(report)
    assert "per record, not per patient" in warning and "up to 3 records" in warning
    assert "no guarantee" not in warning
    # no ids, no DP, or one record per patient: nothing to add or to warn about
    assert with_patients(REPORT, None) is REPORT
    assert with_patients({"enabled": False}, facts) == {"enabled": False}
    assert group_privacy_warning(with_patients(REPORT, patient_facts(np.arange(4)))) is None
    # k = 50 at epsilon 1: the bound says nothing
    many = with_patients(REPORT, patient_facts(np.zeros(50, dtype=int)))
    assert "that is no guarantee (delta >= 1)" in group_privacy_warning(many)


def test_privacy_line_names_the_unit_and_the_patients():
    facts = patient_facts(np.array([0, 0, 0, 1, 2, 2, 3, 3]))
    line = privacy_line(with_patients(REPORT, facts))
    assert line.startswith("privacy: epsilon 1 per record (delta 0.0001); 4 patients, ")
    assert "records per patient median 2 / max 3; for the largest patient (k = 3)" in line
    assert "no patient ids: each record is its own patient" in privacy_line(REPORT)
    assert privacy_line({"enabled": False}) is None and privacy_line(None) is None


def patient_db(root):
    """The small Gaussian database with 100 patients of 3 records (one label each)."""
    return make_patient_db(root)


def test_a_dp_run_on_data_with_patient_ids_reports_per_record_and_warns(tmp_path, capsys):
    db = patient_db(tmp_path / "db")
    out = tmp_path / "run"
    argv = ["--database_root", str(db), *FAST, "--method", "dpfedpft", *TINY["dpfedpft"]]
    # dpfedpft at auto: per patient (each patient's records weighted to a total of 1)
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "auto")]) == 0
    printed = capsys.readouterr()
    privacy = read_metrics(tmp_path / "auto")["privacy"]
    assert privacy["unit"] == "patient" and "group_privacy" not in privacy
    assert "per patient (delta 0.0001); " in printed.out and "not per patient" not in printed.err
    record = [*argv, "--results_dir", str(out), "--privacy_unit", "record"]
    assert main_module.main(record) == 0
    printed = capsys.readouterr()
    privacy = read_metrics(out)["privacy"]
    assert privacy["unit"] == "record" and privacy["patients"]["records_per_patient_max"] == 3
    assert privacy["patients"]["n_patients"] < 100  # the training patients only
    assert privacy["group_privacy"]["epsilon"] == 3 * privacy["epsilon_max"]
    assert "per record (delta 0.0001); " in printed.out and "(k = 3)" in printed.out
    assert "is per record, not per patient" in printed.err


def test_dpcvae_on_data_with_patient_ids_is_private_per_patient_by_default(tmp_path, capsys):
    db = patient_db(tmp_path / "db")
    argv = ["--database_root", str(db), *FAST, "--method", "dpcvae", *TINY["dpcvae"]]
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "auto")]) == 0
    printed = capsys.readouterr()
    privacy = read_metrics(tmp_path / "auto")["privacy"]
    assert privacy["unit"] == "patient" and "group_privacy" not in privacy
    assert all(c["unit"] == "patient" and c["n_released"] < 60 for c in privacy["clients"])
    assert "per patient (delta 0.0001); " in printed.out and "not per patient" not in printed.err
    # per record on request: a distinct run, the group bound and the warning
    record = [*argv, "--results_dir", str(tmp_path / "record"), "--privacy_unit", "record"]
    assert main_module.main(record) == 0
    printed = capsys.readouterr()
    assert read_metrics(tmp_path / "record")["privacy"]["unit"] == "record"
    assert "is per record, not per patient" in printed.err
    assert (
        read_metrics(tmp_path / "record")["config_key"]
        != read_metrics(tmp_path / "auto")["config_key"]
    )
    # the table marks what each row's epsilon is per
    rows = collect([tmp_path])
    assert sorted(r["privacy_unit"] for r in rows) == ["patient", "record, k <= 3"]
    table = to_markdown(rows)
    assert " (patient) |" in table and " (record, k <= 3) |" in table


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_privacy_unit_patient_where_it_cannot_be_is_one_line(tmp_path, capsys, method):
    needle = "--privacy_unit patient: the database has no patient ids"
    db = make_gaussian_db(tmp_path / "db", n_per_file=(300,))
    out = tmp_path / "run"
    argv = ["--database_root", str(db), "--results_dir", str(out), *FAST, "--method", method]
    assert main_module.main([*argv, *TINY[method], "--privacy_unit", "patient"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: {needle}" and not out.exists()


# Run keys of these configurations, computed before --privacy_unit existed (at c7bc38f): its
# default keeps them, so finished runs are not rerun.
KEYS = {
    "dpcvae": "5b0af9304e",
    "dpcvae --dp off": "3d30e2b048",
    "dpcgan": "c9aa2b8c11",
    "dpcgan --dp off": "4a988ca018",
    "dpfedpft": "c34bb50849",
    "dpfedpft --dp off": "ad0b3d1b28",
    "fedavg": "7fab1efb3b",
}


def test_the_default_privacy_unit_keeps_every_run_key():
    facts = DataFacts("gauss", "none", "f" * 64, "split.json", "s" * 64, {})
    for name, key in KEYS.items():
        settings = load_settings(["--database_root", "db", "--method", *name.split()])
        assert config_key(describe_run(settings, facts)[0]) == key, name
    patient = load_settings(["--database_root", "db", "--method", "dpcvae", "--privacy_unit",
                             "patient"])  # fmt: skip
    assert config_key(describe_run(patient, facts)[0]) != KEYS["dpcvae"]
    for unit in ("patient", "record"):  # dpfedpft reads the flag too: a unit asked is keyed
        pft = load_settings(["--database_root", "db", "--method", "dpfedpft", "--privacy_unit",
                             unit])  # fmt: skip
        assert config_key(describe_run(pft, facts)[0]) != KEYS["dpfedpft"]
