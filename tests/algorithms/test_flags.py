"""One record per flag: the config dataclasses' fields carry their flags, the parser is built
from them, parsed flags go back into the configs, and presets are TOML files."""

import ast
import dataclasses
import re

import pytest
from helpers.paths import REPO as ROOT

from algorithms import presets
from algorithms.flags import CONFIGS, SECTIONS, build_parser
from algorithms.options import UsageError, load_settings
from utils.cli import FLAG, flag_of, flagged_fields

DB = ["--database_root", "/nonexistent"]


def settings(*argv: str):
    return load_settings([*DB, *argv])


def test_every_field_flag_is_in_the_parser_with_its_aliases_and_section():
    parser = build_parser()
    by_name = {name: a for a in parser._actions for name in a.option_strings}
    for cls in CONFIGS.values():
        for field, record in flagged_fields(cls):
            own = flag_of(cls, field.name)
            for name in (*own.names, *(n for n, _ in own.switches)):
                assert name in by_name, (cls.__name__, field.name, name)
                assert by_name[name].dest == own.dest
            assert own.section in SECTIONS
            assert parser.section_of[own.dest] == own.section
            if not record.shared and "choices" in own.kwargs:
                assert tuple(by_name[own.names[0]].choices) == tuple(own.kwargs["choices"])


def test_the_flags_of_a_config_are_its_fields_only():
    """A config field without a flag would be filled by nothing: every field has one."""
    for cls in CONFIGS.values():
        for field in dataclasses.fields(cls):
            assert FLAG in field.metadata, (cls.__name__, field.name)


def test_round_trip_of_renamed_flags():
    s = settings(
        *("--method", "fedprox", "--n_rounds", "7", "--local_steps", "3", "--bz", "64"),
        *("--mu", "0.2"),
    )
    fed = s.configs.fedavg
    assert (fed.n_rounds, fed.local_steps, fed.batch_size, fed.mu) == (7, 3, 64, 0.2)
    s = settings("--method", "fedavg", "--fedavg_local_epochs", "2")
    assert s.configs.fedavg.local_steps == 2 and s.configs.fedavg.mu == 0.0  # no FedProx
    s = settings(
        *("--method", "dpcvae", "--n_fedavg_rounds", "4", "--cvae_var", "2.5", "--lr", "0.01"),
        *("--disable_dp", "--gen_batch_size", "0"),
    )
    gen, dp = s.configs.generative, s.configs.dp
    assert (gen.n_rounds, gen.latent_var, gen.lr, gen.batch_size) == (4, 2.5, 0.01, 0)
    assert s.configs.head.lr == 0.01  # --lr: the heads' and the CVAE's
    assert dp.enabled is False
    s = settings("--method", "dpcvae", "--secure_noise", "--dp_calibration", "paper")
    assert s.configs.dp.noise_source == "secure" and s.configs.dp.calibration == "paper"
    # a one-shot release: no DP-SGD settings; one Gaussian per class
    s = settings("--method", "dpfedpft", "--epsilon", "2")
    dp = s.configs.dp
    assert dp.epsilon == 2.0 and dp.accountant is None and dp.max_grad_norm is None
    assert dp.count_noise == 0.0 and s.configs.pft.components == 1


def test_a_validation_message_names_the_flag_not_the_field():
    with pytest.raises(UsageError, match=r"^--bz must be >= 1"):
        settings("--method", "fedavg", "--bz", "0")
    with pytest.raises(UsageError, match=r"^--cvae_var must be > 0"):
        settings("--method", "dpcvae", "--cvae_var", "0")


def test_help_lists_every_preset_with_its_description(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    flat = " ".join(capsys.readouterr().out.split())
    for name in presets.names():
        assert f"{name} ({presets.load(name)['description']}" in flat
    assert "--preset {" + ",".join(presets.names()) + "}" in flat


def test_every_preset_names_flags_that_exist():
    dests = {a.dest for a in build_parser()._actions}
    for name in presets.names():
        assert set(presets.flags(name)) <= dests, name


def test_downstream_is_a_lambda_flag_outside_the_configs():
    s = settings("--method", "dpcvae", "--downstream", "joint")
    assert s.args.downstream == "joint"
    assert settings("--method", "dpcvae").args.downstream == "mix"
    assert s.configs == settings("--method", "dpcvae").configs  # not in the config hash
    with pytest.raises(UsageError, match="--downstream does not apply to --method fedavg"):
        settings("--method", "fedavg", "--downstream", "prior")


def _spellings() -> set[str]:
    """Every spelling of main.py's flags (split flags included)."""
    names = {n for a in build_parser()._actions for n in a.option_strings}
    return {n for n in names if n.startswith("--")} - {"--help"}


def _spelled_flags(source: str) -> set[str]:
    """The flag-like words anywhere in a string of `source` (a definition, a message or a help
    text that names the flag, a command line built with it, the text parts of an f-string);
    docstrings do not count. Flags the module defines for a command line of its own
    (`add_argument`) are left out."""
    tree = ast.parse(source)
    docs, own, found = set(), set(), set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docs.add(id(body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            own.update(a.value for a in node.args if isinstance(a, ast.Constant))
    for node in ast.walk(tree):
        if id(node) in docs or not isinstance(node, ast.Constant):
            continue
        if isinstance(node.value, str):
            found.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*", node.value))
    return found - own


# data/create_db.py's own --device (any torch device), --s_frac (images sampled before
# encoding) and --overwrite (its database) are other flags than main.py's: the modules that
# check them for it name them.
OTHER_TOOLS = {
    "--device": {"backbone.py"},
    "--s_frac": {"source_base.py", "sources.py"},
    "--overwrite": {"encoding.py"},  # create_db.py's own (its chunks)
}
PACKAGES = ("algorithms", "data", "fl", "models", "utils")


def test_the_spelling_scan_sees_every_string_but_docstrings():
    source = '''"""--lr in a docstring."""
def f(e, p):
    """--mu in a docstring."""
    p.add_argument("--seed", help="the seed (see --epsilon)")
    raise ValueError(f"--delta {e}: too high")
    return ["--results_dir", "x"] + [f"{e} --bz", "a-b--c", "raise --count_noise"]
'''
    assert _spelled_flags(source) == {
        "--epsilon",
        "--delta",
        "--results_dir",
        "--bz",
        "--count_noise",
    }


def test_no_flag_is_spelled_in_two_python_files():
    """A flag of main.py is spelled in a string of one library file only: where its record
    defines it.
    Every other module takes the spelling from the record (utils.cli.flag_name, or
    algorithms.flags.spelling for the flags of no config), so a renamed flag changes in one
    place. Scripts under experiments/ are users of the command line, like the shell scripts."""
    files = [ROOT / "main.py"]
    files += [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    where: dict[str, set[str]] = {}
    for path in files:
        for name in _spelled_flags(path.read_text()):
            if path.name not in OTHER_TOOLS.get(name, set()):
                where.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    flags = _spellings()
    assert flags - set(where) == set()  # the scan sees every flag's definition
    twice = {name: sorted(where[name]) for name in flags if len(where[name]) > 1}
    assert twice == {}


def test_a_preset_chosen_on_private_data_says_so_and_a_file_with_other_keys_is_refused(
    tmp_path, monkeypatch
):
    assert presets.not_covered("paper") is None  # the paper's defaults: chosen on no data here
    for name in ("dp", "dp-cgan"):
        assert "not covered by DP" in presets.not_covered(name)
    (tmp_path / "odd.toml").write_text('description = "x"\nnotes = "y"\n[flags]\n')
    monkeypatch.setattr(presets, "FOLDER", tmp_path)
    presets.load.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"odd\.toml: expected a description.*'notes'"):
            presets.load("odd")
    finally:
        presets.load.cache_clear()
