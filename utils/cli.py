"""What every command-line tool shares: bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (`prog: error: message (see --help)`), status 2."""

    def error(self, message: str) -> None:
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
