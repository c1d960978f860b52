"""algorithms/options.py: from main.py's command line to a run's method, configs and execution
(method resolution, explicitly given flags, presets, flags of sections a method does not read,
the checks at the run's start, device and vectorized path)."""

import argparse

import pytest
import torch

from algorithms import presets
from algorithms.flags import CONFIGS, build_parser, config_sections
from algorithms.methods import registry
from algorithms.options import (
    Settings,
    UsageError,
    apply_preset,
    check_applicable,
    check_before_run,
    given_flags,
    load_settings,
    present_configs,
    resolve_execution,
)
from algorithms.run_files import DataFacts, describe_run
from utils.device import ON_CPU, Execution
from utils.results import config_key

DB = ["--database_root", "/nonexistent"]


def settings(*argv: str) -> Settings:
    return load_settings([*DB, *argv])


# --- the method and the configs --------------------------------------------------------------


def test_a_run_keeps_its_command_line_and_its_methods_configs():
    argv = [*DB, "--method", "dpcvae", "--seed", "12"]
    s = load_settings(argv)
    assert s.argv == tuple(argv) and s.method is registry.get("dpcvae")
    assert s.seed == 12 and isinstance(s.seed, int)
    # the split config, then one config per section family the method reads, no other
    for name in registry.NAMES:
        method = registry.get(name)
        configs = settings("--method", name).configs
        assert isinstance(configs, registry.Configs)
        expected = {c for c, cls in CONFIGS.items() if config_sections(cls) & set(method.sections)}
        present = present_configs(configs)
        assert set(present) == {"split"} | expected, name
        assert next(iter(present)) == "split"
        for key, cls in CONFIGS.items():
            assert type(getattr(configs, key)) is (cls if key in present else type(None))


def test_the_method_is_required_and_its_spellings_must_agree():
    with pytest.raises(UsageError, match=r"^--method is required \(one of local, "):
        settings()
    assert settings("--algorithm", "fedprox").method is registry.get("fedprox")
    assert settings("--method", "fedprox", "--algorithm", "fedprox").method.name == "fedprox"
    with pytest.raises(UsageError, match="conflicting method flags: --method -> fedavg"):
        settings("--method", "fedavg", "--algorithm", "fedprox")


def test_a_config_value_error_becomes_a_usage_error_naming_the_flag():
    with pytest.raises(UsageError, match=r"^--local_epochs must be >= 1, got 0"):
        settings("--method", "local", "--local_epochs", "0")


def test_argparse_errors_exit_with_status_2_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        settings("--method", "local", "--no_such_flag")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --no_such_flag" in err


# --- flags given explicitly ------------------------------------------------------------------


def test_given_flags_are_those_on_the_command_line_even_at_their_default():
    parser = build_parser()
    argv = [*DB, "--method", "dpcvae", "--seed", "0", "--disable_dp"]
    args = parser.parse_args(argv)
    assert args.seed == 0  # the default value, given explicitly
    assert given_flags(parser, argv, args) == {"database_root", "method", "seed", "dp"}
    # a parse does not change the namespace it probes
    assert args.dp == "off" and args.seed == 0


def test_a_flag_of_a_section_the_method_does_not_read_is_refused_with_its_users():
    parser = build_parser()
    method = registry.get("local")
    check_applicable(parser, frozenset({"seed", "database_root", "local_epochs"}), method)
    with pytest.raises(UsageError) as err:
        check_applicable(parser, frozenset({"seed", "epsilon"}), method)
    users = ", ".join(registry.using(parser.section_of["epsilon"]))
    assert str(err.value) == f"--epsilon does not apply to --method local (it is used by {users})"
    # every spelling of the flag is named
    with pytest.raises(UsageError, match=r"^--dp/--enable_dp/--disable_dp does not apply"):
        check_applicable(parser, frozenset({"dp"}), method)


def test_every_method_refuses_every_flag_of_the_sections_it_does_not_read():
    parser = build_parser()
    for method in registry.METHODS:
        for dest, section in parser.section_of.items():
            if section in method.sections:
                check_applicable(parser, frozenset({dest}), method)
            else:
                with pytest.raises(UsageError, match=f"does not apply to --method {method.name}"):
                    check_applicable(parser, frozenset({dest}), method)


def test_a_flag_at_its_default_value_is_refused_too():
    """Given explicitly it would still be ignored by the method: refused all the same."""
    with pytest.raises(UsageError, match="--latent_dim does not apply to --method fedavg"):
        settings("--method", "fedavg", "--latent_dim", "100")


# --- presets ---------------------------------------------------------------------------------


def test_apply_preset_fills_what_was_not_given():
    args = argparse.Namespace(preset="dp", latent_dim=100, n_fedavg_rounds=50, seed=0)
    apply_preset(args, frozenset({"n_fedavg_rounds"}))
    values = presets.flags("dp")
    assert args.latent_dim == values["latent_dim"] != 100
    assert args.n_fedavg_rounds == 50  # given explicitly
    assert args.seed == 0  # no preset value
    assert set(values) - {"latent_dim", "n_fedavg_rounds"} <= set(vars(args))
    # the default preset changes nothing
    plain = argparse.Namespace(preset=presets.DEFAULT, latent_dim=100)
    apply_preset(plain, frozenset())
    assert vars(plain) == {"preset": presets.DEFAULT, "latent_dim": 100}


@pytest.mark.parametrize("preset", [p for p in presets.names() if presets.flags(p)])
def test_every_preset_value_reaches_the_parsed_flags_unless_given(preset):
    method = "dpcgan" if "cgan" in preset else "dpcvae"
    values = presets.flags(preset)
    args = settings("--method", method, "--preset", preset).args
    assert {dest: getattr(args, dest) for dest in values} == values
    # each flag given explicitly at its default keeps the default (None: no spelling of it)
    parser = build_parser()
    changed = [d for d in sorted(values) if parser.get_default(d) not in (None, values[d])]
    assert changed  # a preset changes some default
    for dest in changed:
        default = parser.get_default(dest)
        argv = ["--method", method, "--preset", preset, f"--{dest}", str(default)]
        given = settings(*argv).args
        assert getattr(given, dest) == default
        others = {d: getattr(given, d) for d in values if d != dest}
        assert others == {d: v for d, v in values.items() if d != dest}


def test_the_preset_flag_is_refused_where_no_preset_applies():
    with pytest.raises(UsageError, match="--preset does not apply to --method fedavg"):
        settings("--method", "fedavg", "--preset", "dp")


# --- what the run's start checks -------------------------------------------------------------


def test_check_before_run_refuses_a_count_noise_that_spends_the_budget():
    heavy = settings("--method", "dpcvae", "--count_noise", "1")  # parses: no accountant yet
    with pytest.raises(UsageError, match="--count_noise 1.0 alone spends"):
        check_before_run(heavy)
    check_before_run(settings("--method", "dpcvae"))
    check_before_run(settings("--method", "dpcvae", "--disable_dp", "--count_noise", "1"))
    check_before_run(settings("--method", "fedavg"))  # no DP config at all


# --- device and vectorized path ----------------------------------------------------------------


def test_on_cpu_auto_is_the_per_client_cpu_path(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert settings("--method", "dpcvae").execution == ON_CPU == Execution("cpu", False)
    assert settings("--method", "dpcvae", "--device", "cpu").execution == ON_CPU
    on = settings("--method", "dpcvae", "--device", "auto", "--vectorized", "on")
    assert on.execution == Execution("cpu", True)
    assert settings("--method", "fedavg", "--device", "cpu").execution == ON_CPU


def test_a_cuda_request_without_cuda_is_refused_naming_the_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^--device cuda: CUDA is not available here"):
        settings("--method", "local", "--device", "cuda")


def test_vectorized_auto_follows_cuda_for_generative_methods_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def execution(method, device="auto", vectorized="auto"):
        args = argparse.Namespace(device=device, vectorized=vectorized)
        return resolve_execution(args, registry.get(method))

    assert execution("dpcvae") == Execution("cuda", True)
    assert execution("dpcvae", vectorized="off") == Execution("cuda", False)
    assert execution("dpcvae", device="cpu") == Execution("cpu", False)
    assert execution("dpcgan", device="cpu", vectorized="on") == Execution("cpu", True)
    # a method without a vectorized path: never vectorized
    for name in registry.NAMES:
        if "generative" not in registry.get(name).sections:
            assert execution(name, vectorized="on") == Execution("cuda", False)


# --- parsed flags through load_settings and the run's start -------------------------------


def test_flags_of_a_section_the_method_does_not_read_are_refused():
    with pytest.raises(UsageError, match="--mu does not apply to --method fedavg"):
        settings("--method", "fedavg", "--mu", "0.1")
    with pytest.raises(UsageError, match="--dp/--enable_dp/--disable_dp does not apply"):
        settings("--method", "local", "--disable_dp")


def test_a_preset_file_sets_flags_and_an_explicit_flag_wins():
    dp = presets.flags("dp")
    assert presets.names()[0] == "paper" and presets.flags("paper") == {}
    assert presets.load("dp")["description"]
    gen = settings("--method", "dpcvae", "--preset", "dp").configs.generative
    assert gen.preset == "dp"
    assert (gen.cvae_loss, gen.n_rounds, gen.latent_dim) == (
        dp["cvae_loss"],
        dp["n_fedavg_rounds"],
        dp["latent_dim"],
    )
    gen = settings("--method", "dpcvae", "--preset", "dp", "--n_fedavg_rounds", "3")
    assert gen.configs.generative.n_rounds == 3
    # also given explicitly at its default value
    gen = settings("--method", "dpcvae", "--preset", "dp", "--latent_dim", "100")
    assert gen.configs.generative.latent_dim == 100


def test_parsing_runs_no_accountant_the_run_start_does():
    s = settings("--method", "dpcvae", "--count_noise", "1")  # parses
    with pytest.raises(UsageError, match="--count_noise 1.0 alone spends epsilon"):
        check_before_run(s)
    check_before_run(settings("--method", "dpcvae"))


# --- run keys --------------------------------------------------------------------------------

# The config hash (run directory name) of each method's default run on fixed data facts,
# recorded before `Settings.configs` became the typed `registry.Configs`: a refactoring of
# how the configs travel must not move any existing run's directory.
DEFAULT_RUN_KEYS = {
    "local": "d57d3c74a8",
    "centralized": "a7011a3db6",
    "fedavg": "7d67ff1a28",
    "fedprox": "235e6fba14",
    "fedlambda": "cfa156aa9b",
    "dpfedavg": "78a3a4e8f0",  # new with the method (issue 31)
    "dpcgan": "9df2b1d706",
    "dpcvae": "353613b835",
    "fedpft": "6f4daa9fb5",
    "dpfedpft": "03fa2dce6c",
}


def test_a_default_runs_config_and_key_are_unchanged():
    facts = DataFacts("digits", "raw", "f" * 64, "split.json", "0" * 64, {})
    keys = {}
    for name in registry.NAMES:
        method = registry.get(name)
        config, _ = describe_run(settings("--method", name, "--results_dir", "/r"), facts)
        # config.json's order: the split config, then the method's configs in CONFIGS' order
        sections = [c for c, cls in CONFIGS.items() if config_sections(cls) & set(method.sections)]
        head = ["method", "database_root", "database", "split"]
        assert list(config) == [*head, *sections, "weights_grid_resolution"], name
        keys[name] = config_key(config)
    assert keys == DEFAULT_RUN_KEYS
