"""Every method: the same seed gives the same metrics.json byte for byte (wall time aside) and the
same history.csv; another run seed gives other results."""

import json
import re

import pytest
import torch
from helpers.tiny import FAST, TINY

import main as main_module
from algorithms.methods import registry
from utils.io import read_csv

FLAGS = TINY  # each method's flags (a flag that a method does not read is refused)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from helpers.databases import make_gaussian_db

    return make_gaussian_db(tmp_path_factory.mktemp("determinism") / "db", n_per_file=(300,))


def metrics_bytes_without_wall_time(run_dir) -> bytes:
    """metrics.json's bytes with only the value of cost.wall_seconds blanked out."""
    text = (run_dir / "metrics.json").read_bytes()
    blanked, n = re.subn(rb'"wall_seconds": [^,\n]+', b'"wall_seconds": 0', text)
    assert n == 1
    return blanked


def results(run_dir) -> dict:
    """What a run computed: per-client metrics, lambda, fidelity and the per-round history."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "clients": metrics["clients"],
        "lambda_val_acc": metrics["lambda_val_acc"],
        "fidelity": metrics["fidelity"],
        "history": read_csv(run_dir / "history.csv"),
    }


def test_every_registered_method_has_its_flags_here():
    assert set(FLAGS) == set(registry.NAMES)


@pytest.mark.parametrize("method", registry.NAMES)
def test_same_seed_same_files_other_seed_other_results(db, tmp_path, method):
    extra = FLAGS[method]
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        argv = ["--database_root", str(db), "--results_dir", str(tmp_path / name), *FAST]
        assert main_module.main([*argv, "--method", method, "--seed", seed, *extra]) == 0
    a, b, c = (tmp_path / n for n in "abc")
    assert metrics_bytes_without_wall_time(a) == metrics_bytes_without_wall_time(b)
    assert (a / "history.csv").read_bytes() == (b / "history.csv").read_bytes()
    assert results(a) != results(c)


@pytest.mark.parametrize("method", registry.with_flow("generative"))
def test_the_thread_count_does_not_change_a_generative_run(db, tmp_path, method):
    """--num_threads sets how many clients train at once (each on one torch thread) and the
    threads of the heads' training: results must not depend on it."""
    runs, before = {}, torch.get_num_threads()
    try:
        for threads in ("1", "2"):
            run_dir = tmp_path / f"threads_{threads}"
            argv = ["--database_root", str(db), "--results_dir", str(run_dir), *FAST]
            argv += ["--method", method, "--seed", "11", "--num_threads", threads]
            assert main_module.main([*argv, *FLAGS[method]]) == 0
            runs[threads] = results(run_dir)
    finally:
        torch.set_num_threads(before)  # main() sets the process's thread count
    assert runs["1"] == runs["2"]
