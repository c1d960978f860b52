"""What every command-line tool shares: bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (`prog: error: message (see --help)`), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class OutputError(ValueError):
    """An output path given by a flag cannot be written; the message names the flag."""


def check_output(path: str | Path, flag: str, folder: bool = False) -> None:
    """Raise OutputError naming `flag` when `path` cannot be created: a folder in place of the file
    (or a file in place of the folder), or a file where a parent folder must be."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want = "a folder" if folder else "a file"
        raise OutputError(f"{flag} {path}: exists and is not {want}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")


# --- one record per flag: a config dataclass field carries its flag in its metadata ---------

FLAG = "flag"  # the key of a field's metadata that holds its Flag


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # no value given (dataclasses.MISSING cannot be a field's default)


@dataclass(frozen=True)
class Flag:
    """A config field's command-line flag: its spellings (the first names it in messages), its
    --help line (`{default}` is replaced by the default), its section (--help group; flags of a
    section a method does not read are refused), and how its value reaches the field.

    `kwargs`: what else argparse's add_argument takes (type, choices, action, metavar; the type
    defaults to that of the default). `default`: the flag's default when not the field's.
    `convert`: parsed value -> field value. `unused`: the field's value when the method does
    not read the section (UNSET: the parsed value anyway). `switches`: other spellings of the
    same dest, each (name, add_argument kwargs), mutually exclusive with this one. `shared`:
    (dataclass, field) whose flag this field reads instead of having its own."""

    names: tuple[str, ...] = ()
    help: str = ""
    section: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    default: Any = UNSET
    convert: Callable[[Any], Any] | None = None
    unused: Any = UNSET
    switches: tuple[tuple[str, dict], ...] = ()
    shared: tuple[type, str] | None = None

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-")


def flag(
    *names: str,
    help: str,  # noqa: A002 (argparse's name)
    section: str | None = None,
    default: Any = UNSET,
    convert: Callable[[Any], Any] | None = None,
    unused: Any = UNSET,
    switches: tuple[tuple[str, dict], ...] = (),
    **kwargs: Any,
) -> dict[str, Flag]:
    """A field's metadata: `field(default=..., metadata=flag("--name", help=..., ...))`.

    Args:
        names: the flag's spellings, the first one its name in messages.
        help: its --help line (`{default}` is replaced by the default).
        section: its --help group; a method that does not read it refuses the flag.
        default: the flag's default when not the field's.
        convert: parsed value -> field value (None: the parsed value).
        unused: the field's value when the method does not read the section.
        switches: other spellings of the same dest, each (name, add_argument kwargs).
        kwargs: what else argparse's add_argument takes (type, choices, action, metavar).
    """
    return {FLAG: Flag(names, help, section, kwargs, default, convert, unused, switches)}


def same_flag(cls: type, name: str) -> dict[str, Flag]:
    """The metadata of a field that reads the flag of `cls`'s field `name` (one flag, two
    configs: the heads' --lr is also the CVAE's learning rate)."""
    return {FLAG: Flag(shared=(cls, name))}


def flag_of(cls: type, name: str) -> Flag:
    """The Flag of `cls`'s field `name` (following `same_flag`)."""
    record = {f.name: f for f in dataclasses.fields(cls)}[name].metadata[FLAG]
    return flag_of(*record.shared) if record.shared else record


def flag_name(obj: Any, name: str) -> str:
    """The flag of field `name` of the dataclass `obj` (or class), for messages: `--n_rounds`."""
    return flag_of(obj if isinstance(obj, type) else type(obj), name).names[0]


def flagged_fields(cls: type) -> list[tuple[dataclasses.Field, Flag]]:
    """`cls`'s fields that carry a flag (shared ones included), in field order."""
    return [(f, f.metadata[FLAG]) for f in dataclasses.fields(cls) if FLAG in f.metadata]


def add_flags(
    cls: type,
    group_of: Callable[[str | None], Any],
    note: Callable[[str], str] = lambda dest: "",
) -> list[argparse.Action]:
    """Add the flags of `cls`'s fields, each to the group `group_of(section)` returns;
    `note(dest)` is appended to a flag's help (the presets that set it). Returns the actions."""
    actions = []
    for f, record in flagged_fields(cls):
        if record.shared:
            continue
        default = f.default if record.default is UNSET else record.default
        kwargs = dict(record.kwargs)
        plain = "action" not in kwargs and "choices" not in kwargs
        if plain and "type" not in kwargs and type(default) in (int, float):
            kwargs["type"] = type(default)
        if "action" not in kwargs or kwargs["action"] not in ("store_true", "store_false"):
            kwargs["default"] = default
        text = record.help.replace("{default}", str(default)) + note(record.dest)
        group = group_of(record.section)
        if record.switches:
            group = group.add_mutually_exclusive_group()
        actions.append(group.add_argument(*record.names, help=text, **kwargs))
        for name, extra in record.switches:
            actions.append(group.add_argument(name, dest=record.dest, **extra))
    return actions


def config_from_args(cls: type, args: argparse.Namespace, sections: Sequence[str | None]) -> Any:
    """An instance of `cls` from parsed flags: each field's flag value (converted), or its
    `unused` value when its section is not among `sections` (those a method reads)."""
    values = {}
    for f, _ in flagged_fields(cls):
        own = flag_of(cls, f.name)  # a shared field: the record of the flag it reads
        if own.section not in sections and own.unused is not UNSET:
            values[f.name] = own.unused
            continue
        value = getattr(args, own.dest)
        values[f.name] = own.convert(value) if own.convert else value
    return cls(**values)
