"""--preset: named sets of flag values, one TOML file each in this folder (`<name>.toml`).

A preset file holds a `description` (shown in --help) and a `[flags]` table: the values it
gives to flags (by dest, as `argparse` names them: `n_fedavg_rounds`) that the command line does
not give explicitly. A flag given explicitly always wins over the preset's value. A preset whose
values were chosen on private data says so in `not_covered` (listed in the run's privacy report).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

FOLDER = Path(__file__).parent
DEFAULT = "paper"


def names() -> tuple[str, ...]:
    """The presets there are: the default first, then by name."""
    found = sorted(p.stem for p in FOLDER.glob("*.toml"))
    return tuple(sorted(found, key=lambda name: name != DEFAULT))


@functools.cache
def load(name: str) -> dict:
    """The preset `name`: {"description": str, "flags": {dest: value}}."""
    path = FOLDER / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r} (one of {', '.join(names())})")
    with path.open("rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"description", "flags", "not_covered"}
    if unknown or not isinstance(data.get("description"), str):
        raise ValueError(
            f"{path}: expected a description, a [flags] table and optionally not_covered, "
            f"got {sorted(data)}"
        )
    return {
        "description": data["description"],
        "flags": dict(data.get("flags", {})),
        "not_covered": data.get("not_covered"),
    }


def flags(name: str) -> dict[str, object]:
    """The flag values (by dest) that preset `name` sets."""
    return load(name)["flags"]


def not_covered(name: str) -> str | None:
    """What choosing preset `name`'s values spent on private data, outside the DP guarantee."""
    return load(name)["not_covered"]
