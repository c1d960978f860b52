"""utils/cli.py: one-line usage errors, output-path checks, and flags recorded on config
dataclass fields (parser generated from them, parsed values back into the dataclass)."""

from dataclasses import dataclass, field

import pytest

from utils.cli import (
    FLAG,
    UNSET,
    Flag,
    OutputError,
    Parser,
    add_flags,
    check_output,
    config_from_args,
    flag,
    flag_name,
    flag_of,
    flagged_fields,
    same_flag,
)

# --- Parser ----------------------------------------------------------------------------------


def test_a_usage_error_is_one_line_with_status_2(capsys):
    parser = Parser(prog="tool")
    parser.add_argument("--n", type=int, default=1)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "x"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "tool: error: argument --n: invalid int value: 'x' (see --help)\n"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "tool: error: unrecognized arguments: --bogus (see --help)\n"


# --- check_output ----------------------------------------------------------------------------


def test_check_output_accepts_what_can_be_created(tmp_path):
    check_output(tmp_path / "new.json", "--out")
    check_output(tmp_path / "a" / "b" / "new.json", "--out")  # parents are created later
    (tmp_path / "old.json").write_text("{}")
    check_output(tmp_path / "old.json", "--out")  # overwritten
    check_output(tmp_path, "--results_dir", folder=True)
    check_output(tmp_path / "new_dir", "--results_dir", folder=True)


def test_check_output_refuses_a_folder_where_a_file_must_be_and_vice_versa(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match=r"^--out .*dir: exists and is not a file$"):
        check_output(tmp_path / "dir", "--out")
    with pytest.raises(OutputError, match=r"^--results_dir .*file: exists and is not a folder$"):
        check_output(tmp_path / "file", "--results_dir", folder=True)


@pytest.mark.parametrize("folder", [False, True])
def test_check_output_refuses_a_file_where_a_parent_folder_must_be(tmp_path, folder):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"^--out .*: .*file is a file, not a folder$"):
        check_output(blocker / "sub" / "out.json", "--out", folder=folder)
    assert isinstance(OutputError("x"), ValueError)  # callers catch it as a bad value


# --- flags on dataclass fields ---------------------------------------------------------------


@dataclass(frozen=True)
class Toy:
    rounds: int = field(
        default=3,
        metadata=flag("--n_rounds", "--rounds", section="toy", help="rounds. Default: {default}"),
    )
    rate: float = field(default=0.5, metadata=flag("--rate", section="toy", help="rate {default}"))
    mode: str = field(
        default="fast",
        metadata=flag(
            "--mode",
            section="extra",
            choices=["fast", "slow"],
            unused="none",
            help="how. Default: {default}",
        ),
    )
    enabled: bool = field(
        default=True,
        metadata=flag(
            "--switch",
            section="toy",
            choices=("on", "off"),
            default=None,
            convert=lambda value: value != "off",
            switches=(
                ("--enable", {"action": "store_const", "const": "on", "help": "on"}),
                ("--disable", {"action": "store_const", "const": "off", "help": "off"}),
            ),
            help="on or off. Default: on",
        ),
    )
    verbose: bool = field(
        default=False, metadata=flag("--verbose", section="toy", action="store_true", help="more")
    )
    name: str = field(default="x", metadata=flag("--name", help="a flag of no section"))


@dataclass(frozen=True)
class Reader:
    """A second config that reads Toy's --rate (one flag, two configs)."""

    rate: float = field(default=0.5, metadata=same_flag(Toy, "rate"))
    steps: int = field(default=1, metadata=flag("--steps", section="reader", help="steps"))


def _parser(*classes):
    parser = Parser(prog="toy")
    groups = {}

    def group_of(section):
        if section not in groups:
            groups[section] = parser.add_argument_group(str(section))
        return groups[section]

    actions = [a for cls in classes for a in add_flags(cls, group_of, lambda d: f" [{d}]")]
    return parser, groups, actions


def test_flag_records_its_spellings_and_dest():
    record = flag_of(Toy, "rounds")
    assert isinstance(record, Flag)
    assert record.names == ("--n_rounds", "--rounds") and record.dest == "n_rounds"
    assert record.section == "toy" and record.unused is UNSET and record.convert is None
    assert flag_of(Toy, "mode").kwargs == {"choices": ["fast", "slow"]}
    assert flag_of(Toy, "name").section is None


def test_flag_name_is_the_first_spelling_of_a_class_or_instance():
    assert flag_name(Toy, "rounds") == "--n_rounds"
    assert flag_name(Toy(), "enabled") == "--switch"
    assert flag_name(Reader, "rate") == "--rate"  # followed to Toy's flag


def test_same_flag_reads_the_flag_of_another_config():
    own = Reader.__dataclass_fields__["rate"].metadata[FLAG]
    assert own.shared == (Toy, "rate") and own.names == ()
    assert flag_of(Reader, "rate") is flag_of(Toy, "rate")
    assert [f.name for f, _ in flagged_fields(Reader)] == ["rate", "steps"]


def test_add_flags_adds_each_flag_with_its_help_default_and_type():
    parser, groups, actions = _parser(Toy)
    by_dest = {}
    for a in actions:
        by_dest.setdefault(a.dest, []).append(a)
    rounds = by_dest["n_rounds"][0]
    assert rounds.option_strings == ["--n_rounds", "--rounds"]
    assert rounds.help == "rounds. Default: 3 [n_rounds]"  # {default} replaced, note appended
    assert by_dest["rate"][0].help == "rate 0.5 [rate]"
    assert rounds.type is int and by_dest["rate"][0].type is float  # from the default
    assert by_dest["mode"][0].type is None  # choices: the strings themselves
    assert by_dest["switch"][0].default is None  # the flag's own default, not the field's
    assert by_dest["verbose"][0].default is False
    # one action per spelling group, the switches under the same dest
    assert [a.option_strings for a in by_dest["switch"]] == [
        ["--switch"],
        ["--enable"],
        ["--disable"],
    ]
    assert set(groups) == {"toy", "extra", None}
    assert rounds in groups["toy"]._group_actions
    assert by_dest["name"][0] in groups[None]._group_actions
    args = parser.parse_args(["--rounds", "7", "--rate", "0.25", "--mode", "slow", "--verbose"])
    assert (args.n_rounds, args.rate, args.mode, args.verbose) == (7, 0.25, "slow", True)
    defaults = parser.parse_args([])
    assert (defaults.n_rounds, defaults.rate, defaults.mode, defaults.switch) == (
        3,
        0.5,
        "fast",
        None,
    )


def test_an_explicit_type_is_kept():
    @dataclass
    class Typed:
        size: int = field(default=2, metadata=flag("--size", type=float, help="size"))

    parser, _, _ = _parser(Typed)
    assert parser.parse_args(["--size", "2.5"]).size == 2.5


def test_a_shared_field_adds_no_second_flag():
    parser, _, actions = _parser(Toy, Reader)
    assert [a.dest for a in actions].count("rate") == 1
    assert parser.parse_args(["--rate", "0.1"]).rate == 0.1


def test_switches_are_mutually_exclusive_spellings_of_one_dest(capsys):
    parser, _, _ = _parser(Toy)
    assert parser.parse_args(["--disable"]).switch == "off"
    assert parser.parse_args(["--enable"]).switch == "on"
    assert parser.parse_args(["--switch", "off"]).switch == "off"
    for argv in (["--switch", "on", "--disable"], ["--enable", "--disable"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err


def test_config_from_args_converts_and_fills_unread_sections():
    parser, _, _ = _parser(Toy)
    args = parser.parse_args(["--rounds", "5", "--disable", "--mode", "slow"])
    toy = config_from_args(Toy, args, ["toy", "extra"])
    assert toy == Toy(rounds=5, rate=0.5, mode="slow", enabled=False, verbose=False, name="x")
    # convert: None (no spelling given) and "on" are both on
    assert config_from_args(Toy, parser.parse_args([]), ["toy", "extra"]).enabled is True
    assert config_from_args(Toy, parser.parse_args(["--enable"]), ["toy"]).enabled is True
    # a section not read: the field's `unused` value, whatever was parsed
    assert config_from_args(Toy, args, ["toy"]).mode == "none"
    # a field without `unused` keeps its parsed value even when its section is not read
    assert config_from_args(Toy, args, []).rounds == 5


def test_config_from_args_reads_a_shared_flag():
    parser, _, _ = _parser(Toy, Reader)
    args = parser.parse_args(["--rate", "0.125", "--steps", "4"])
    assert config_from_args(Reader, args, ["reader"]) == Reader(rate=0.125, steps=4)


def test_a_shared_field_takes_the_conversion_and_unused_value_of_the_flag_it_reads():
    @dataclass(frozen=True)
    class Follower:
        enabled: bool = field(default=True, metadata=same_flag(Toy, "enabled"))
        mode: str = field(default="fast", metadata=same_flag(Toy, "mode"))

    parser, _, _ = _parser(Toy)
    args = parser.parse_args(["--disable", "--mode", "slow"])
    assert config_from_args(Follower, args, ["toy", "extra"]) == Follower(False, "slow")
    assert config_from_args(Follower, args, ["toy"]).mode == "none"  # extra not read


def test_config_from_args_lets_the_dataclass_validate():
    @dataclass(frozen=True)
    class Checked:
        n: int = field(default=1, metadata=flag("--n", section="s", help="n"))

        def __post_init__(self):
            if self.n < 1:
                raise ValueError(f"{flag_name(self, 'n')} must be >= 1, got {self.n}")

    parser, _, _ = _parser(Checked)
    with pytest.raises(ValueError, match=r"^--n must be >= 1, got 0$"):
        config_from_args(Checked, parser.parse_args(["--n", "0"]), ["s"])
