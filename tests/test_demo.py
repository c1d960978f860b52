"""`make demo`'s pipeline on a reduced setting: the real script, a tiny random backbone, one
seed and few rounds. Every method must leave a valid metrics file and the table one row each."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.results import read_metrics

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    "local",
    "centralized",
    "fedavg",
    "fedprox",
    "fedlambda",
    "dpcgan",
    "dpcvae",
    "fedpft",
    "dpfedpft",
]


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
        if m["method"] in ("dpcvae", "dpcgan", "dpfedpft"):
            assert m["privacy"]["epsilon_max"] <= 1.0
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
        "real_vs_synthetic_dpcgan.png",
    } <= plots
