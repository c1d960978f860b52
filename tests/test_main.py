"""main.py end to end on a small database: every baseline, the results files, refusals."""

import json

import pytest

import main as main_module
from utils.io import read_csv
from utils.results import read_metrics

FAST = ["--n_clients", "3", "--n_rounds", "3", "--local_epochs", "20", "--quiet"]


def run(db, out, *extra):
    return main_module.main(["--database_root", str(db), "--results_dir", str(out), *FAST, *extra])


@pytest.mark.parametrize("method", ["local", "centralized", "fedavg", "fedprox", "fedlambda"])
def test_each_baseline_writes_valid_results(gauss_db, tmp_path, method):
    out = tmp_path / method
    assert run(gauss_db, out, "--method", method) == 0
    m = read_metrics(out)
    assert m["method"] == method and m["seed"] == 3407 and len(m["clients"]) == 3
    assert m["split"]["n_clients"] == 3 and m["split"]["seed"] == 202502
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["config_key"] == m["config_key"]
    history = read_csv(out / "history.csv")
    if method in ("fedavg", "fedprox", "fedlambda"):
        assert [int(r["round"]) for r in history] == [1, 2, 3]
        assert m["cost"]["params_shared"] == 16 * 4 + 4
        assert m["cost"]["bytes_per_round"] == 4 * m["cost"]["params_shared"]
    else:
        assert history == [] and m["cost"]["params_shared"] == 0
    assert (m["lambda"] is not None) == (method == "fedlambda")


def test_separable_data_is_learned(gauss_db, tmp_path):
    assert run(gauss_db, tmp_path / "c", "--method", "centralized", "--local_epochs", "100") == 0
    assert read_metrics(tmp_path / "c")["summary"]["test_acc_mean"] > 0.9


def test_paper_spellings_select_methods(gauss_db, tmp_path):
    assert run(gauss_db, tmp_path / "a", "--algorithm", "fedprox") == 0
    assert read_metrics(tmp_path / "a")["method"] == "fedprox"
    assert run(gauss_db, tmp_path / "b", "--aggregator_type", "local") == 0
    assert read_metrics(tmp_path / "b")["method"] == "local"


def test_same_seed_same_metrics_other_seed_different(gauss_db, tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run(gauss_db, tmp_path / name, "--method", "fedlambda", "--seed", seed) == 0
    a, b, c = (read_metrics(tmp_path / n) for n in "abc")
    for m in (a, b, c):
        m["cost"].pop("wall_seconds")
    assert a["clients"] == b["clients"] and a["summary"] == b["summary"]
    assert a["clients"] != c["clients"]


def test_finished_run_is_refused_then_overwritten(gauss_db, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(gauss_db, out, "--method", "local") == 0
    assert run(gauss_db, out, "--method", "local") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(gauss_db, out, "--method", "local", "--overwrite") == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "--method is required"),
        (["--method", "local", "--algorithm", "normal"], "conflicting"),
        (["--method", "fedavg", "--n_rounds", "0"], "--n_rounds"),
        (["--method", "fedavg", "--sampling_rate", "0"], "--sampling_rate"),
        (["--method", "local", "--alpha", "0"], "--alpha"),
        (["--method", "local", "--local_epochs", "0"], "--local_epochs"),
        (["--method", "fedlambda", "--weights_grid_resolution", "0"], "--weights_grid_resolution"),
    ],
)
def test_bad_flags_exit_2_and_name_the_flag(gauss_db, tmp_path, capsys, args, needle):
    out = tmp_path / "r"
    assert run(gauss_db, out, *args) == 2
    assert needle in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_missing_database_is_a_clear_error(tmp_path, capsys):
    assert run(tmp_path / "nope", tmp_path / "r", "--method", "local") == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_default_results_dir_is_derived_from_the_configuration(gauss_db, tmp_path):
    args = [
        "--database_root",
        str(gauss_db),
        "--results_root",
        str(tmp_path),
        *FAST,
        "--method",
        "local",
    ]
    assert main_module.main(args) == 0
    runs = list(tmp_path.rglob("metrics.json"))
    assert len(runs) == 1
    assert runs[0].parent.name == "seed_3407" and runs[0].parent.parent.name.startswith("local-")
