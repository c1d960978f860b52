"""main.py end to end on a small database: every baseline, the results files, refusals."""

import json

import numpy as np
import pytest
from helpers.tiny import FAST, HEAD, TINY, tiny

import main as main_module
from utils.io import read_csv
from utils.plots import synthetic_inputs
from utils.results import read_metrics

FEDERATED = ("fedavg", "fedprox", "fedlambda")


def run(db, out, *extra):
    return main_module.main(["--database_root", str(db), "--results_dir", str(out), *FAST, *extra])


@pytest.mark.parametrize("method", ["local", "centralized", "fedavg", "fedprox", "fedlambda"])
def test_each_baseline_writes_valid_results(gauss_db, tmp_path, method):
    out = tmp_path / method
    # 3 rounds for the federated ones: their history is checked as rounds [1, 2, 3] below
    flags = tiny(method, n_rounds=3) if method in FEDERATED else TINY[method]
    assert run(gauss_db, out, "--method", method, *flags) == 0
    m = read_metrics(out)
    assert m["method"] == method and m["seed"] == 3407 and len(m["clients"]) == 3
    assert m["split"]["n_clients"] == 3 and m["split"]["seed"] == 202502
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["config_key"] == m["config_key"]
    history = read_csv(out / "history.csv")
    if method in FEDERATED:
        assert [int(r["round"]) for r in history] == [1, 2, 3]
        assert m["cost"]["params_shared"] == 16 * 4 + 4
        assert m["cost"]["bytes_per_round"] == 4 * m["cost"]["params_shared"]
    else:
        assert history == [] and m["cost"]["params_shared"] == 0
    assert (m["lambda"] is not None) == (method == "fedlambda")


def test_separable_data_is_learned(gauss_db, tmp_path):
    flags = tiny("centralized", local_epochs=100)  # 100 epochs: it must learn (accuracy > 0.9)
    assert run(gauss_db, tmp_path / "c", "--method", "centralized", *flags) == 0
    assert read_metrics(tmp_path / "c")["summary"]["test_acc_mean"] > 0.9


def test_paper_spellings_select_methods(gauss_db, tmp_path):
    assert run(gauss_db, tmp_path / "a", "--algorithm", "fedprox", *TINY["fedprox"]) == 0
    assert read_metrics(tmp_path / "a")["method"] == "fedprox"
    assert run(gauss_db, tmp_path / "b", "--aggregator_type", "local", *TINY["local"]) == 0
    assert read_metrics(tmp_path / "b")["method"] == "local"


def test_finished_run_is_refused_then_overwritten(gauss_db, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(gauss_db, out, "--method", "local", *TINY["local"]) == 0
    assert run(gauss_db, out, "--method", "local", *TINY["local"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(gauss_db, out, "--method", "local", *TINY["local"], "--overwrite") == 0


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
        *TINY["local"],
        "--method",
        "local",
    ]
    assert main_module.main(args) == 0
    runs = list(tmp_path.rglob("metrics.json"))
    assert len(runs) == 1
    assert runs[0].parent.name == "seed_3407" and runs[0].parent.parent.name.startswith("local-")


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_generative_methods_write_privacy_fidelity_and_cost(gauss_db, tmp_path, method):
    out = tmp_path / method
    assert run(gauss_db, out, "--method", method, *TINY[method], "--save_synthetic") == 0
    m = read_metrics(out)
    p = m["privacy"]
    assert p["enabled"] and p["accountant"] == "prv" and p["target_epsilon"] == 1.0
    assert p["delta"] == 1e-4 and p["max_grad_norm"] == 1.5 and p["calibration"] == "total"
    assert [c["id"] for c in p["clients"]] == [c["id"] for c in m["clients"]]
    assert all(0 < c["epsilon"] <= 1.0 for c in p["clients"])
    assert all({"sample_rate", "steps", "noise_multiplier"} <= set(c) for c in p["clients"])
    assert len(m["fidelity"]["wasserstein"]) == 3 and m["fidelity"]["wasserstein_mean"] > 0
    assert m["lambda"] is not None
    # the synthetic data's own worth: per client, and the global model's on the pooled test data
    fid = m["fidelity"]
    assert len(fid["synthetic_acc"]) == 3 and all(0 <= a <= 1 for a in fid["synthetic_acc"])
    glob = fid["global_synthetic"]
    assert glob["n_test"] == sum(c["n_test"] for c in m["clients"]) and glob["chance"] == 0.25
    assert 0 <= glob["acc"] <= 1 and isinstance(fid["synthetic_at_chance"], bool)
    # the lambda protocol under both metrics; the table's rows are the chosen one's
    assert m["lambda_metric"] == "accuracy" and set(m["lambda_protocol"]) == {
        "accuracy",
        "balanced_accuracy",
    }
    chosen = m["lambda_protocol"]["accuracy"]
    assert chosen["lambda"] == m["lambda"] and chosen["summary"] == m["summary"]
    assert m["cost"]["params_shared"] > 0 and m["cost"]["params_model"] > m["cost"]["params_shared"]
    history = read_csv(out / "history.csv")
    assert len(history) == 2
    assert float(history[-1]["epsilon_max"]) == pytest.approx(p["epsilon_max"])
    assert {f"epsilon_client{i}" for i in range(3)} <= set(history[0])
    # --save_synthetic: what the plots draw as real_vs_synthetic_<method>.png (the demo's plot)
    syn = synthetic_inputs({"dir": out, "metrics": m})
    assert syn["method"] == method and syn["classes"] == ["c0", "c1", "c2", "c3"]
    assert syn["real"].shape[1] == syn["fake"].shape[1] == 16 and len(syn["fake"]) > 0


def test_paper_spelling_and_paper_calibration_warns_and_reports_the_overspend(
    gauss_db, tmp_path, capsys
):
    out = tmp_path / "paper"
    # 20 epochs of noise (the paper's calibration), 10 rounds x 3 epochs of training
    # batches of 64: 0.8 s here against 1.8 s with TINY's 128 (measured in this file's run)
    flags = tiny("dpcvae", n_fedavg_rounds=10, local_epochs_gen=3, gen_batch_size=64)
    args = ["--anonymizer", "cvae_fedavg", "--dp_calibration", "paper", "--accountant", "rdp"]
    assert run(gauss_db, out, *args, *flags) == 0
    m = read_metrics(out)
    assert m["method"] == "dpcvae"
    assert m["privacy"]["epsilon_max"] > 1.0
    assert "exceeds the target" in capsys.readouterr().err


def test_disable_dp_runs_and_says_nothing_is_private(gauss_db, tmp_path):
    out = tmp_path / "nodp"
    argv = ["--method", "dpcvae", "--disable_dp", "--save_synthetic", *TINY["dpcvae"]]
    assert run(gauss_db, out, *argv) == 0
    m = read_metrics(out)
    assert m["privacy"]["enabled"] is False
    with np.load(out / "synthetic.npz") as syn:
        assert syn["embeddings"].shape == (sum(c["n_train"] for c in m["clients"]), 16)
        assert sorted(set(syn["client"].tolist())) == [c["id"] for c in m["clients"]]
        assert ((syn["embeddings"] > 0) & (syn["embeddings"] < 1)).all()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epsilon", "0"], "--epsilon"),
        (["--delta", "1"], "--delta"),
        (["--cvae_beta", "-1"], "--cvae_beta"),
        (["--n_fedavg_rounds", "0"], "--n_fedavg_rounds"),
    ],
)
def test_bad_generative_flags_exit_2(gauss_db, tmp_path, capsys, args, needle):
    assert run(gauss_db, tmp_path / "r", "--method", "dpcvae", *args) == 2
    assert needle in capsys.readouterr().err


def test_skip_existing_reports_a_finished_run_and_exits_0(gauss_db, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(gauss_db, out, "--method", "local", *TINY["local"]) == 0
    before = (out / "metrics.json").read_text()
    assert run(gauss_db, out, "--method", "local", *TINY["local"], "--skip_existing") == 0
    assert "skipping" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


def test_run_directory_does_not_depend_on_where_the_database_lies(gauss_db, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "db"
    shutil.copytree(gauss_db, moved)
    common = [*FAST, *TINY["local"], "--method", "local", "--results_root", str(tmp_path / "res")]
    assert main_module.main(["--database_root", str(gauss_db), *common]) == 0
    assert main_module.main(["--database_root", str(moved), *common, "--skip_existing"]) == 0
    assert len(list((tmp_path / "res").rglob("metrics.json"))) == 1


def test_preset_dp_sets_the_recipe_and_explicit_flags_override_it(gauss_db, tmp_path):
    out = tmp_path / "preset"
    # the head's tiny flags alone: TINY's generative ones would override the preset's
    argv = ["--method", "dpcvae", "--preset", "dp", "--n_fedavg_rounds", "3", *HEAD]
    assert run(gauss_db, out, *argv, "--lambda_metric", "balanced_accuracy") == 0
    config = json.loads((out / "config.json").read_text())
    gen = config["generative"]
    assert gen["preset"] == "dp" and gen["cvae_loss"] == "elbo" and gen["cvae_layers"] == 0
    assert gen["batch_size"] == 0 and gen["latent_dim"] == 4 and gen["cvae_lr"] == 0.1
    assert gen["n_rounds"] == 3  # given explicitly
    m = read_metrics(out)
    assert m["lambda_metric"] == "balanced_accuracy"
    assert m["lambda"] == m["lambda_protocol"]["balanced_accuracy"]["lambda"]
    # whole-client batches: sampling rate 1, one step per round
    assert all(c["sample_rate"] == 1.0 and c["steps"] == 3 for c in m["privacy"]["clients"])
    assert any("--preset dp" in line for line in m["privacy"]["not_covered"])
    # the decoder is one linear map: (latent 4 + 4 classes) x 16 + 16 numbers
    assert m["cost"]["params_shared"] == (4 + 4) * 16 + 16


def test_preset_is_a_generative_flag(gauss_db, tmp_path, capsys):
    # it sets the generative models' flags (the CGAN's too), not the CVAE's alone
    assert run(gauss_db, tmp_path / "r", "--method", "fedpft", "--preset", "dp") == 2
    assert "--preset does not apply to --method fedpft" in capsys.readouterr().err
