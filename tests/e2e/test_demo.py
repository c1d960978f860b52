"""`make demo`'s pipeline on a reduced setting: the real script, a tiny random backbone, one
seed, few rounds and two of its methods (METHODS), one per stream: the encoding, a baseline (the
background stream, which also writes the split) and a DP method (the foreground stream, saved
with --save_synthetic), a privacy sweep run, then the table and the plots. Each run must leave a
valid metrics file and the table one row each.

The demo's other methods are run end to end through main.py elsewhere: the baselines by
tests/e2e/test_main.py::test_each_baseline_writes_valid_results, dpcgan (with
--save_synthetic, what its real-vs-synthetic plot reads) by
test_generative_methods_write_privacy_fidelity_and_cost, fedpft and dpfedpft by
tests/algorithms/methods/test_fedpft.py::test_main_runs_both_methods_to_a_valid_metrics_file;
every method's flags in demo.sh go through main.py's checks in
tests/e2e/test_scripts.py::test_the_demo_runs_every_registry_method."""

import csv
import os
import subprocess
import sys

import pytest
from helpers.paths import REPO as ROOT

from utils.results import read_metrics

METHODS = ["local", "dpcvae"]  # in the table's order


@pytest.mark.slow
def test_demo_pipeline_reduced(tmp_path):
    env = {
        **os.environ,
        "PY": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "DEMO_BACKBONE": "test_efficientnet",
        "DEMO_WEIGHTS": "random",
        "DEMO_SEEDS": "3407",
        "DEMO_SWEEP": "4",
        "DEMO_SWEEP_METHODS": "dpcvae",
        "METHODS": " ".join(METHODS),
        "DEMO_DATABASE": str(tmp_path / "db"),
        "DEMO_RESULTS": str(tmp_path / "results"),
        "DEMO_HEAD_FLAGS": "--local_epochs 20",
        "DEMO_FED_FLAGS": "--n_rounds 2",
        "DEMO_GEN_FLAGS": "--n_fedavg_rounds 2 --local_epochs_gen 1",
        "DEMO_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments/digits/demo.sh")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "results"
    runs = sorted((results / "main").rglob("metrics.json"))
    assert sorted(read_metrics(p.parent)["method"] for p in runs) == sorted(METHODS)
    for p in runs:
        m = read_metrics(p.parent)
        assert len(m["clients"]) >= 2
        if m["method"] == "dpcvae":
            assert m["privacy"]["epsilon_max"] <= 1.0
    (sweep,) = (results / "sweep").rglob("metrics.json")
    m = read_metrics(sweep.parent)
    assert m["method"] == "dpcvae" and m["privacy"]["target_epsilon"] == 4.0
    with (results / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == METHODS
    table = (results / "table.md").read_text()
    assert table.count("\n") == len(METHODS) + 2  # header, rule, one row per method
    assert "| dpcvae |" in table and "table.md" in proc.stdout
    plots = {p.name for p in (results / "plots").glob("*.png")}
    assert {
        "client_accuracy.png",
        "training_curves.png",
        "privacy_utility.png",
        "real_vs_synthetic_dpcvae.png",
    } == plots
