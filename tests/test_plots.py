"""Plots are made from results files: each expected PNG is written and is a real image."""

import pytest

import main as main_module
from utils.plots import main as plots_main

GEN = [
    "--n_fedavg_rounds",
    "2",
    "--local_epochs_gen",
    "1",
    "--gen_batch_size",
    "64",
    "--hidden_dim",
    "16",
    "--latent_dim",
    "4",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from conftest import make_gaussian_db

    root = tmp_path_factory.mktemp("plots")
    db = make_gaussian_db(root / "db", n_per_file=(600,))
    common = [
        "--database_root",
        str(db),
        "--n_clients",
        "3",
        "--n_rounds",
        "2",
        "--local_epochs",
        "10",
        "--quiet",
        *GEN,
    ]
    for method in ("local", "centralized", "fedavg", "fedlambda", "dpcvae"):
        extra = ["--save_synthetic"] if method == "dpcvae" else []
        assert (
            main_module.main(
                [*common, "--method", method, "--results_root", str(root / "main"), *extra]
            )
            == 0
        )
    assert (
        main_module.main(
            [*common, "--method", "dpcvae", "--epsilon", "4", "--results_root", str(root / "sweep")]
        )
        == 0
    )
    return root


def test_every_plot_is_written_from_the_files(results, capsys):
    out = results / "plots"
    argv = [str(results / "main"), "--sweep", str(results / "sweep"), "--out", str(out)]
    assert plots_main([*argv, "--database_root", str(results / "db")]) == 0
    names = {p.name for p in out.glob("*.png")}
    assert names == {
        "client_accuracy.png",
        "training_curves.png",
        "privacy_utility.png",
        "real_vs_synthetic_dpcvae.png",
    }
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


def test_plots_without_a_sweep_or_a_database_skip_those_plots(results, capsys):
    out = results / "plots_nosweep"
    assert plots_main([str(results / "main"), "--out", str(out)]) == 0
    assert not (out / "privacy_utility.png").exists()
    assert (out / "client_accuracy.png").exists()
    # the database is never looked up from config.json: the user names it
    assert not list(out.glob("real_vs_synthetic_*.png"))
    assert "pass --database_root" in capsys.readouterr().err


def test_real_vs_synthetic_refuses_another_database_and_writes_nothing(results, capsys):
    from conftest import make_gaussian_db

    other = make_gaussian_db(results / "other_db", n_per_file=(600,), seed=9)
    out = results / "plots_other"
    argv = [str(results / "main"), "--out", str(out), "--database_root", str(other)]
    assert plots_main(argv) == 2
    err = capsys.readouterr().err
    assert "different database" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_plots_refuse_an_empty_folder(tmp_path, capsys):
    assert plots_main([str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "no finished run" in capsys.readouterr().err
