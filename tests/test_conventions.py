"""Conventions the code keeps (docs/architecture.md): a function of more than five parameters
takes them keyword-only and names each in an `Args:` section; every package ships `py.typed`
(PEP 561) through pyproject.toml's package-data; the licence pyproject.toml names is there."""

import ast
import sys
from pathlib import Path

from helpers.paths import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# fl/ is the Flower deployment, outside this rule for now (its own review)
SCANNED = ("algorithms", "data", "models", "utils", "experiments", "fl")


def long_signatures(source: str) -> list[str]:
    """'name:line: what' for each function of more than five parameters (self and cls aside)
    that takes one positionally, or whose docstring does not name each in an `Args:` section."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        a = node.args
        positional = [x.arg for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
        names = positional + [x.arg for x in a.kwonlyargs]
        if len(names) <= 5:
            continue
        where = f"{node.name}:{node.lineno}"
        if positional:
            out.append(f"{where}: positional {', '.join(positional)}")
        doc = ast.get_docstring(node) or ""
        args = doc.partition("Args:")[2]
        missing = [n for n in names if f"{n}:" not in args]
        if missing:
            out.append(f"{where}: Args: lacks {', '.join(missing)}")
    return out


def test_the_scan_finds_positional_and_undocumented_long_signatures():
    source = '''
def ok(*, a, b, c, d, e, f):
    """Sums.

    Args:
        a: 1. b: 2. c: 3. d: 4. e: 5. f: 6.
    """
def five(a, b, c, d, e): pass
def method(self, a, b, c, d, e): pass
def bad(a, b, *, c, d, e, f):
    """Args:
        a: 1.
    """
'''
    assert long_signatures(source) == [
        "bad:10: positional a, b",
        "bad:10: Args: lacks b, c, d, e, f",
    ]


def test_long_signatures_are_keyword_only_and_documented():
    found = {}
    for package in SCANNED:
        for path in sorted((REPO / package).rglob("*.py")):
            if problems := long_signatures(path.read_text()):
                found[str(path.relative_to(REPO))] = problems
    assert found == {}


def test_every_package_ships_py_typed_and_the_licence_is_there():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setup = project["tool"]["setuptools"]
    assert "py.typed" in setup["package-data"]["*"]
    for package in setup["packages"]:
        assert (REPO / Path(*package.split(".")) / "py.typed").is_file(), package
    licence = (REPO / "LICENSE").read_text()
    assert project["project"]["license"]["text"] == "MIT" and licence.startswith("MIT License")
