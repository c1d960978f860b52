"""experiments/mixing_probe.py: it rebuilds a run's two heads exactly (its lambda protocol
reproduced), splits macro-F1 into the test set's own classes and the absent ones, and refuses a
run without synthetic.npz."""

import json
import runpy

import numpy as np
import pytest
from helpers.paths import REPO as ROOT
from helpers.tiny import FAST, TINY

import main as main_module

PROBE = runpy.run_path(str(ROOT / "experiments" / "mixing_probe.py"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from helpers.databases import make_gaussian_db

    root = tmp_path_factory.mktemp("probe")
    db = make_gaussian_db(root / "db", n_per_file=(600,))
    out = root / "run"
    argv = ["--database_root", str(db), *FAST, "--method", "dpcvae", *TINY["dpcvae"]]
    argv += ["--epsilon", "8", "--save_synthetic", "--results_dir", str(out)]
    assert main_module.main(argv) == 0
    return out


def test_f1_report_separates_the_classes_absent_from_the_test_set():
    table, present, absent = PROBE["f1_report"](np.array([0, 0, 1]), np.array([0, 2, 1]))
    # class 0: precision 1, recall 1/2, F1 2/3; class 1: F1 1; class 2 (absent): F1 0
    assert table == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert present == pytest.approx((2 / 3 + 1) / 2)
    assert absent == 1


def test_the_probe_reproduces_the_runs_protocol_and_writes_its_figures(run_dir, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert PROBE["main"]([str(run_dir), "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for metric, protocol in metrics["lambda_protocol"].items():
        row = figures[f"mix, lambda by {metric}"]
        assert row["lambda"] == protocol["lambda"]
        for key in ("acc", "balanced_acc", "f1_macro"):
            assert row[key] == pytest.approx(100 * protocol["summary"][f"test_{key}_mean"])
        assert row["f1_macro_test_classes"] >= row["f1_macro"] - 1e-9
    assert figures["local"]["lambda"] == 1.0
    assert figures["local"]["f1_macro_test_classes"] >= figures["local"]["f1_macro"] - 1e-9
    assert "mix with the client's prior, lambda by accuracy" in capsys.readouterr().out


def test_a_run_without_synthetic_data_is_refused(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.json"):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(SystemExit, match="synthetic.npz is missing"):
        PROBE["probe"](bare)
