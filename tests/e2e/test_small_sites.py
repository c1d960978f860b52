"""Small sites (issue 33, item 1): DP-FedPFT on sites of 13 and 6 images, where every class's
noisy count falls under the sampling threshold, reports the empty synthetic set (a warning, the
synthetic-only and fidelity cells "empty", the other rows kept) and exits 0; a run that fails
leaves nothing half-written."""

import json

import pytest
from helpers.images import TINY_BACKBONE, make_site_manifest

import algorithms.experiment as experiment
import data.create_db as create_db
import main as main_module
from utils.collect import main as collect_main

ENCODE = ["--backbone", TINY_BACKBONE, "--random_init", "--quiet", "--num_workers", "0"]


@pytest.fixture
def small_sites(tmp_path):
    manifest = make_site_manifest(tmp_path / "images", {"a": 13, "b": 6})
    db = tmp_path / "db"
    assert create_db.main(["--dataset", "csv", "--manifest", str(manifest),
                           "--database_root", str(db), *ENCODE]) == 0  # fmt: skip
    return db


def _dpfedpft(db, out) -> list[str]:
    run = ["--database_root", str(db), "--results_dir", str(out), "--quiet"]
    return [*run, "--method", "dpfedpft", "--split_method", "by_site", "--epsilon", "2"]


def test_an_empty_synthetic_set_is_reported_and_the_run_finishes(small_sites, tmp_path, capsys):
    out = tmp_path / "run"
    assert main_module.main(_dpfedpft(small_sites, out)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "warning: empty synthetic data: client(s) 0, 1 drew no synthetic record" in err
    metrics = json.loads((out / "metrics.json").read_text())
    fid = metrics["fidelity"]
    assert fid["synthetic_empty"] == [0, 1] and fid["global_synthetic"]["empty"]
    assert fid["wasserstein"] == [None, None] and fid["synthetic_acc_mean"] is None
    assert len(metrics["clients"]) == 2  # the other rows are kept: the local heads' rows
    assert all(0 <= row["test_acc"] <= 1 for row in metrics["clients"])
    assert collect_main([str(out)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "| dpfedpft" in line)
    cells = [c.strip() for c in row.split("|")]
    assert cells.count("empty") == 2  # W-dist and Syn. acc


def test_a_failed_run_leaves_nothing_half_written(small_sites, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(experiment, "evaluate_clients", fail)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        main_module.main(_dpfedpft(small_sites, out))
    assert not out.exists()  # config.json removed, and the folder this run made
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        main_module.main(_dpfedpft(small_sites, kept))
    assert kept.is_dir() and not any(kept.iterdir())  # a folder the user made stays, empty
