"""Plots are made from results files: each expected PNG is written and is a real image."""

import shutil

import numpy as np
import pytest
from helpers.tiny import FAST, TINY

import main as main_module
from utils.plots import main as plots_main
from utils.results import read_metrics

# one xdist worker runs the whole module: the module-scoped runs below are made once, not
# once per worker
pytestmark = pytest.mark.xdist_group("test_plots")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from helpers.databases import make_gaussian_db

    root = tmp_path_factory.mktemp("plots")
    db = make_gaussian_db(root / "db", n_per_file=(600,))
    common = ["--database_root", str(db), *FAST]
    for method in ("local", "centralized", "fedavg", "fedlambda", "dpcvae"):
        extra = [*TINY[method], "--results_root", str(root / "main")]
        if method == "dpcvae":
            extra.append("--save_synthetic")
        assert main_module.main([*common, "--method", method, *extra]) == 0
    sweep = [*TINY["dpcvae"], "--epsilon", "4", "--results_root", str(root / "sweep")]
    assert main_module.main([*common, "--method", "dpcvae", *sweep]) == 0
    return root


def test_every_plot_is_written_from_the_files(results, capsys):
    out = results / "plots"
    argv = [str(results / "main"), "--sweep", str(results / "sweep"), "--out", str(out)]
    assert plots_main(argv) == 0
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


def test_plots_without_a_sweep_skip_that_plot_and_read_synthetic_npz_alone(results, capsys):
    out = results / "plots_nosweep"
    assert plots_main([str(results / "main"), "--out", str(out)]) == 0
    assert not (out / "privacy_utility.png").exists()
    assert (out / "client_accuracy.png").exists()
    # real vs synthetic needs no database: synthetic.npz holds the plotted client's real rows
    assert (out / "real_vs_synthetic_dpcvae.png").exists()


def test_synthetic_npz_holds_the_largest_clients_real_training_rows(results):
    """What the plot draws as real is the largest client's training data in model space."""
    from data.clients import client_datasets
    from data.database import load_database
    from data.features import squash
    from data.partition import load_split
    from utils.plots import synthetic_inputs

    run = next((results / "main").rglob("synthetic.npz")).parent
    metrics = read_metrics(run)
    inputs = synthetic_inputs({"dir": run, "metrics": metrics})
    db = load_database(results / "db")
    clients = client_datasets(db, load_split(next((results / "db" / "splits").glob("*")), db))
    largest = max(clients, key=lambda c: c.n_train)
    assert inputs["client"] == largest.id and inputs["classes"] == ["c0", "c1", "c2", "c3"]
    np.testing.assert_allclose(inputs["real"], squash(largest.x_train, 2.0), rtol=1e-6)
    np.testing.assert_array_equal(inputs["real_labels"], largest.y_train)
    assert len(inputs["fake"]) == largest.n_train  # --synthetic_labels match


def test_a_synthetic_npz_without_real_rows_is_refused_and_nothing_written(results, capsys):
    copy = results / "old"
    run = next((results / "main").rglob("synthetic.npz")).parent
    shutil.copytree(run, copy / run.name)
    with np.load(copy / run.name / "synthetic.npz") as npz:
        old = {k: npz[k] for k in ("embeddings", "labels", "client")}
    np.savez(copy / run.name / "synthetic.npz", **old)  # as main.py wrote it before
    out = results / "plots_old"
    assert plots_main([str(copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lacks real_embeddings" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_plots_refuse_an_empty_folder(tmp_path, capsys):
    assert plots_main([str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "no finished run" in capsys.readouterr().err
