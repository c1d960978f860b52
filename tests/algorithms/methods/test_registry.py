"""The method registry is the one list of methods: --help, the tables, the plots and Flower all
list exactly its methods, in its order. Flags that a method does not read are refused, with the
methods that read them; the paper's misleading spellings are aliases; Opacus is the tested one;
config.json records the versions of what computed it."""

import re
from pathlib import Path

import numpy as np
import opacus
import pytest
from helpers.tiny import TINY

import main as main_module
from algorithms.evaluation.protocol import ClientProbs, Evaluation, Outcome
from algorithms.methods import registry
from algorithms.methods.generative import client_type
from algorithms.methods.pft_config import release_dp
from algorithms.options import UsageError, load_settings
from algorithms.run_files import RunFiles, close_run
from data.clients import ClientData
from fl.settings import SettingsError, run_settings
from utils.collect import collect, method_order
from utils.io import read_json, write_json
from utils.plots import PALETTE, by_method, color, make_all
from utils.provenance import versions
from utils.results import display_key, read_metrics

ROWS = [
    {"id": 0, "n_train": 8, "n_val": 2, "n_test": 2}
    | {f"test_{m}": 0.5 for m in ("acc", "balanced_acc", "f1_macro", "f1_weighted")}
]


def finished_runs(root: Path) -> list[Path]:
    """One run directory per registry method, written by the run lifecycle (reverse order)."""
    dirs = []
    for i, method in enumerate(reversed(registry.METHODS)):
        run = RunFiles(root / f"run{i}", method, f"key{i}", "d", "b")
        run.run_dir.mkdir(parents=True)
        close_run(
            run=run,
            seed=1,
            split_args={},
            evaluation=Evaluation(ROWS),
            outcome=Outcome(None, None, [], 0),
            wall=1.0,
        )
        dirs.append(run.run_dir)
    return dirs


def test_every_method_has_tiny_flags_that_it_reads():
    """tests/helpers/tiny.py holds a tiny run of every registered method (the tests that run
    every method, e.g. tests/e2e/test_resume.py, read them), each accepted by its method."""
    assert set(TINY) == set(registry.NAMES)
    for name in registry.NAMES:
        load_settings(["--database_root", "db", "--method", name, *TINY[name]])


def test_help_lists_exactly_the_registry_methods(capsys):
    with pytest.raises(SystemExit) as done:
        main_module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    choices = re.search(r"--method \{([a-z,]+)\}", text).group(1).split(",")
    assert tuple(choices) == registry.NAMES
    flat = " ".join(text.split())
    for m in registry.METHODS:
        assert f"{m.name}: {m.help}" in flat


def test_every_flag_says_its_default_in_its_help():
    from algorithms.flags import build_parser

    for action in build_parser()._actions:
        if action.dest != "help":
            assert re.search(r"Default|Required", action.help), action.option_strings


def test_tables_and_plots_list_the_registry_methods_in_its_order(tmp_path):
    dirs = finished_runs(tmp_path)
    # the command lines read the registry's order when they run; the results do not carry it
    assert method_order() == registry.NAMES
    assert not any("display_order" in read_metrics(d) for d in dirs)
    assert [r["method"] for r in collect([tmp_path], order=method_order())] == list(registry.NAMES)
    runs = [
        {"dir": d, "metrics": read_metrics(d), "rank": display_key(m.name, registry.NAMES)}
        for d, m in zip(dirs, reversed(registry.METHODS))
    ]
    grouped = by_method(runs)
    assert tuple(grouped) == registry.NAMES
    colors = [color(rs[0]) for rs in grouped.values()]
    assert len(set(colors)) == len(colors) and set(colors) <= set(PALETTE)


def test_old_results_with_a_display_order_still_tabulate_in_the_registry_order(tmp_path):
    """Files written before the order left metrics.json keep their `display_order`: read,
    and ignored (here it is reversed), the rows follow the registry."""
    for i, d in enumerate(finished_runs(tmp_path)):
        path = d / "metrics.json"
        write_json(path, read_json(path) | {"display_order": i})
    assert [r["method"] for r in collect([tmp_path], order=method_order())] == list(registry.NAMES)
    plots = make_all([tmp_path], tmp_path / "plots", order=registry.NAMES)
    assert {p.name for p in plots} == {"client_accuracy.png"}


def test_epsilon_column_comes_from_the_registry_flags_in_the_results(tmp_path):
    finished_runs(tmp_path)
    eps = {r["method"]: r["epsilon_spent"] for r in collect([tmp_path])}
    for m in registry.METHODS:
        # no privacy accounting in these runs: private methods share nothing, the others share
        # without DP
        assert eps[m.name] == (0.0 if m.private else float("inf"))


def test_flower_runs_exactly_the_registry_flower_methods(tmp_path):
    base = f"--database_root {tmp_path} --split_file {tmp_path}/s.json --results_dir {tmp_path}/r"
    flower = registry.flower_methods()
    assert flower and set(flower) < set(registry.NAMES)
    for m in registry.METHODS:
        args = {"main-args": f"{base} --method {m.name}"}
        if m.flower:
            assert run_settings(args).method is m
        else:
            with pytest.raises(SettingsError, match=f"one of {', '.join(flower)}\\)"):
                run_settings(args)


def test_the_paper_spellings_select_their_methods():
    base = ["--database_root", "db"]
    for m in registry.METHODS:
        for flag, value in m.aliases:
            assert load_settings([*base, f"--{flag}", value]).method is m
    with pytest.raises(UsageError, match="--aggregator_type centralized names the paper's"):
        load_settings([*base, "--aggregator_type", "centralized", "--method", "fedavg"])


@pytest.mark.parametrize(
    ("method", "flags", "users"),
    [
        ("dpcvae", ["--mu", "0.05"], "fedprox"),  # also at its default value
        ("fedavg", ["--mu", "0.1"], "fedprox"),
        ("dpcvae", ["--sampling_rate", "0.5"], "fedavg, fedprox, fedlambda, dpfedavg"),
        ("local", ["--epsilon", "2"], "dpfedavg, dpcgan, dpcvae, dpfedpft"),
        ("local", ["--disable_dp"], "dpfedavg, dpcgan, dpcvae, dpfedpft"),
        (
            "fedavg",
            ["--local_epochs", "5"],
            "local, centralized, fedlambda, dpcgan, dpcvae, fedpft, dpfedpft",
        ),
        ("dpcgan", ["--hidden_dim", "16"], "dpcvae"),
        ("dpcvae", ["--gan_lr", "1e-3"], "dpcgan"),
        (
            "centralized",
            ["--weights_grid_resolution", "0.5"],
            "fedlambda, dpcgan, dpcvae, fedpft, dpfedpft",
        ),
        ("dpcgan", ["--local_steps", "2"], "fedavg, fedprox, fedlambda, dpfedavg"),
        ("fedprox", ["--save_synthetic"], "dpcgan, dpcvae, fedpft, dpfedpft"),
        ("dpfedpft", ["--max_grad_norm", "1"], "dpfedavg, dpcgan, dpcvae"),
    ],
)
def test_a_flag_the_method_does_not_read_is_refused(tmp_path, capsys, method, flags, users):
    out = tmp_path / "run"
    argv = ["--database_root", str(tmp_path), "--results_dir", str(out), "--method", method]
    assert main_module.main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert f"does not apply to --method {method} (it is used by {users})" in err
    assert err.count("\n") == 1 and not out.exists()


def test_the_misleading_flags_have_clear_spellings():
    base = ["--database_root", "db"]
    old = load_settings([*base, "--method", "fedavg", "--local_steps", "3"]).configs.fedavg
    new = load_settings([*base, "--method", "fedavg", "--fedavg_local_epochs", "3"])
    assert old == new.configs.fedavg and old.local_steps == 3
    dp = {f: load_settings([*base, "--method", "dpcvae", *f.split()]).configs.dp for f in
          ("--dp on", "--enable_dp", "--dp off", "--disable_dp")}  # fmt: skip
    assert dp["--dp on"] == dp["--enable_dp"] and dp["--dp on"].enabled
    assert dp["--dp off"] == dp["--disable_dp"] and not dp["--dp off"].enabled
    with pytest.raises(SystemExit):  # argparse: one switch, one spelling at a time
        load_settings([*base, "--method", "dpcvae", "--dp", "on", "--disable_dp"])
    lr = load_settings([*base, "--method", "dpcvae", "--lr", "0.01"]).configs
    assert lr.head.lr == lr.generative.lr == 0.01  # the heads and the CVAE
    assert lr.generative.gan_lr == 2e-4  # not the CGAN's
    mu = load_settings([*base, "--method", "fedavg"]).configs.fedavg.mu
    assert mu == 0.0 and load_settings([*base, "--method", "fedprox"]).configs.fedavg.mu == 0.05


def test_dp_refuses_an_untested_opacus(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(opacus, "__version__", "1.5.4")
    out = tmp_path / "run"
    argv = ["--database_root", str(tmp_path), "--results_dir", str(out), "--method", "dpcvae"]
    assert main_module.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs opacus 1.6.0" in err and "1.5.4 is installed" in err and not out.exists()
    # without DP nothing of Opacus's internals runs
    assert not load_settings([*argv, "--dp", "off"]).configs.dp.enabled


def test_versions_name_what_the_numbers_depend_on(gauss_db, tmp_path):
    expected = {"python", "torch", "numpy", "scikit-learn", "opacus", "flwr", "geomloss", "timm"}
    assert expected <= set(versions())
    out = tmp_path / "run"
    argv = ["--database_root", str(gauss_db), "--results_dir", str(out), "--method", "local"]
    assert main_module.main([*argv, "--n_clients", "2", "--quiet"]) == 0
    config = read_metrics(out) and (out / "config.json").read_text()
    assert all(f'"{name}"' in config for name in expected)


def _toy(ctx: registry.RunContext, cfg: registry.Configs) -> Outcome:
    """A toy method: each client predicts its own training labels' class frequencies."""

    def prior(c: ClientData, n: int) -> np.ndarray:
        counts = np.bincount(c.y_train, minlength=ctx.n_classes) + 1.0
        return np.tile(counts / counts.sum(), (n, 1))

    local = [ClientProbs(prior(c, len(c.y_val)), prior(c, len(c.y_test))) for c in ctx.clients]
    return Outcome(local, None, [{"round": 1, "loss": 0.0}], 0)


def test_a_new_method_is_one_registry_entry_run_end_to_end(gauss_db, tmp_path, monkeypatch):
    """Adding a method is one entry: `--method` accepts it and the run lifecycle writes its
    metrics.json (one row per client; the tables place it after the paper's methods)."""
    toy = registry.Method("toy", "class priors (a test)", _toy, ("head",))
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, toy))
    monkeypatch.setattr(registry, "NAMES", (*registry.NAMES, "toy"))
    out = tmp_path / "run"
    argv = ["--database_root", str(gauss_db), "--results_dir", str(out), "--n_clients", "3"]
    assert main_module.main([*argv, "--quiet", "--method", "toy"]) == 0
    metrics = read_metrics(out)
    assert metrics["method"] == "toy"
    assert "display_order" not in metrics  # the tables read the order from the registry
    assert method_order()[-1] == "toy"
    assert [row["id"] for row in metrics["clients"]] == [0, 1, 2]
    assert all(0 <= row["test_acc"] <= 1 for row in metrics["clients"])


def test_what_is_looked_up_about_a_method_is_in_its_entry():
    """The generic code finds a method's client class, vectorized engine and end-of-run flow in
    its registry entry, never by its name."""
    for m in registry.METHODS:
        assert m.flow in registry.FLOWS
        assert (m.client is None) == (m.flow == "head")
        assert m.vectorized is None or m.flow == "generative"
    assert registry.with_flow("generative") == ("dpcgan", "dpcvae")
    assert registry.with_flow("pft") == ("fedpft", "dpfedpft")
    assert client_type("dpcvae") is registry.get("dpcvae").client
    for name in registry.with_flow("pft"):
        assert release_dp(name) == (name == "dpfedpft")
    with pytest.raises(ValueError, match="not a generative method"):
        client_type("fedpft")
