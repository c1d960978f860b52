"""Every experiment script builds commands that main.py accepts: each script runs with PY=echo
(which prints the commands instead of running them), and each printed main.py command goes
through the library's parser, flag checks and config builders. The databases the scripts read
are the ones the create_db.sh scripts write."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers.paths import REPO as ROOT

from algorithms.methods import registry
from algorithms.options import load_settings

DATASETS = ("digits", "organsmnist", "camelyon17", "fashionmnist")


def commands(script: str, tmp_path: Path, **env: str) -> list[list[str]]:
    """The commands `script` runs, printed by PY=echo (the Python interpreter's arguments)."""
    proc = subprocess.run(
        ["bash", str(ROOT / script)],
        env={**os.environ, "PY": "echo", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def main_commands(script: str, tmp_path: Path, **env: str) -> list[list[str]]:
    """The main.py command lines of `script`, each parsed and checked by the library."""
    argvs = [c[1:] for c in commands(script, tmp_path, **env) if c[:1] == ["main.py"]]
    assert argvs, f"{script} runs no main.py"
    for argv in argvs:
        load_settings(argv)  # raises (or exits) on any flag main.py would refuse
    return argvs


def methods_of(argvs: list[list[str]]) -> set[str]:
    return {argv[argv.index("--method") + 1] for argv in argvs}


def value(argv: list[str], flag: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]  # the last one, as argparse


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_script_runs_commands_main_accepts(dataset, tmp_path):
    folder = f"experiments/{dataset}"
    base = main_commands(f"{folder}/base.sh", tmp_path)
    assert methods_of(base) == {"fedavg"}
    baselines = ("local", "centralized", "fedavg", "fedprox")
    everything = main_commands(f"{folder}/base.sh", tmp_path, METHODS=" ".join(baselines))
    assert methods_of(everything) == set(baselines)
    assert methods_of(main_commands(f"{folder}/fedlambda.sh", tmp_path)) == {"fedlambda"}
    ours = main_commands(f"{folder}/ours.sh", tmp_path, METHODS="dpcvae dpcgan")
    assert methods_of(ours) == {"dpcvae", "dpcgan"}
    # the rival: fedpft (no DP) runs once per seed without --epsilon, dpfedpft at each epsilon
    pft = main_commands(f"{folder}/ours.sh", tmp_path, METHODS="fedpft dpfedpft")
    assert sorted(methods_of([a]).pop() for a in pft) == ["dpfedpft"] * 3 + ["fedpft"] * 3
    assert all(("--epsilon" in a) == (value(a, "--method") == "dpfedpft") for a in pft)
    for argv in [*base, *everything, *ours, *pft]:
        assert value(argv, "--database_root").startswith(f"data/{dataset}/database/")
        assert "--skip_existing" in argv and "--resume" in argv
    # three seeds of every method
    assert len(everything) == 3 * len(baselines)


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_privacy_sweep_takes_the_flags_of_ours_sh(dataset, tmp_path):
    ours = main_commands(f"experiments/{dataset}/ours.sh", tmp_path, METHODS="dpcvae")[0]
    sweep = main_commands("experiments/privacy_sweep.sh", tmp_path, DATASET=dataset)
    assert methods_of(sweep) == {"dpcvae", "dpcgan", "dpfedpft"}
    epsilons = {float(value(argv, "--epsilon")) for argv in sweep}
    assert epsilons == {0.5, 1.0, 2.0, 4.0, 8.0}
    same = [a for a in sweep if value(a, "--epsilon") == "1" and value(a, "--method") == "dpcvae"]
    # at epsilon 1, the same configuration as ours.sh's run (3 seeds, one of them ours.sh's)
    o = load_settings(ours)
    assert len(same) == 3 and sum(load_settings(a).seed == o.seed for a in same) == 1
    for a in same:
        assert load_settings(a).configs == o.configs


def test_the_demo_runs_every_registry_method(tmp_path):
    env = {"DEMO_DATABASE": str(tmp_path / "db"), "DEMO_RESULTS": str(tmp_path / "results")}
    argvs = main_commands("experiments/digits/demo.sh", tmp_path, **env)
    assert methods_of(argvs) == set(registry.NAMES)


@pytest.mark.parametrize("dataset", ("organsmnist", "camelyon17", "fashionmnist"))
def test_the_runs_read_the_databases_that_create_db_writes(dataset, tmp_path):
    written = {
        value(c, "--database_root")
        for c in commands(f"experiments/{dataset}/create_db.sh", tmp_path)
        if "data/create_db.py" in c
    }
    for script in ("base.sh", "fedlambda.sh", "ours.sh"):
        argvs = main_commands(f"experiments/{dataset}/{script}", tmp_path)
        assert {value(a, "--database_root") for a in argvs} <= written


def test_the_fashionmnist_study_runs_every_variant_over_the_sweep(tmp_path):
    argvs = main_commands("experiments/fashionmnist/study.sh", tmp_path)
    settings = [load_settings(a) for a in argvs]
    assert {"local", "centralized", "fedavg", "fedlambda", "dpcvae", "dpcgan", "dpfedpft"} <= {
        s.method.name for s in settings
    }

    def runs(method: str, preset: str) -> list:
        """The runs of a method variant (the paper's: its loss, not the no-DP ELBO comparison)."""
        gen = [s for s in settings if s.method.name == method]
        gen = [s for s in gen if s.configs.generative.preset == preset]
        return [s for s in gen if preset == "dp" or s.configs.generative.cvae_loss == "paper"]

    variants = (("dpcvae", "paper"), ("dpcvae", "dp"), ("dpcgan", "paper"), ("dpfedpft", "paper"))
    for method, preset in variants:
        private = [s for s in runs(method, preset) if s.configs.dp.enabled]
        eps = sorted({s.configs.dp.epsilon for s in private})
        assert eps == [0.5, 1.0, 2.0, 4.0, 8.0], (method, preset)
        at_one = {s.seed for s in private if s.configs.dp.epsilon == 1.0}
        assert at_one == {3407, 12345, 202502}, (method, preset)
        assert any(not s.configs.dp.enabled for s in runs(method, preset)), (method, preset)
    # the two losses without DP, with the paper's architecture
    no_dp = [s for s in settings if s.method.name == "dpcvae" and not s.configs.dp.enabled]
    losses = {(s.configs.generative.cvae_loss, s.configs.generative.cvae_layers) for s in no_dp}
    assert {("paper", 3), ("elbo", 3), ("elbo", 0)} <= losses


def test_gpu_table_runs_every_method_for_three_seeds_at_epsilon_1_on_the_device(tmp_path):
    argvs = main_commands("experiments/gpu_table.sh", tmp_path, DEVICE="cpu")
    assert methods_of(argvs) == set(registry.NAMES)
    assert len(argvs) == 3 * len(registry.NAMES)
    for argv in argvs:
        assert value(argv, "--device") == "cpu"
        assert value(argv, "--database_root").startswith("data/organsmnist/database/")
        if value(argv, "--method") in ("dpcvae", "dpcgan", "dpfedpft"):
            assert value(argv, "--epsilon") == "1.0"
    on_gpu = [c for c in commands("experiments/gpu_table.sh", tmp_path) if c[:1] == ["main.py"]]
    assert {value(c, "--device") for c in on_gpu} == {"cuda"}
