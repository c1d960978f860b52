"""Checks of a site's own image list before anything is encoded: the classes (fewer than two
refused; likely label mistakes warned about) and the CSV manifest's delimiter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from data.source_base import SourceError

DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}


def detect_delimiter(header: str) -> str:
    """The manifest's delimiter, from its header line: csv.Sniffer among comma, semicolon and
    tab (Excel writes `;` in many locales), else the one the line holds most, else a comma."""
    try:
        return csv.Sniffer().sniff(header, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def class_warnings(
    names: list[str], labels: np.ndarray, where: list[str], integer: bool, source: Path
) -> list[str]:
    """Refuse fewer than two classes with images (SourceError naming `source`); return the
    warnings about likely label mistakes: a class of fewer than two images (an integer label
    gap makes an empty class), and class names that differ only in case or spaces. `where`:
    each image's place (manifest line or file); `integer`: the labels are class indices."""
    counts = np.bincount(labels, minlength=len(names))
    present = [n for n, c in zip(names, counts) if c]
    if len(present) < 2:
        shown = ", ".join(repr(n) for n in present) or "none"
        raise SourceError(
            f"{source}: {len(present)} class with images ({shown}); a classifier needs at "
            "least two classes"
        )
    out = []
    for i, (name, count) in enumerate(zip(names, counts)):
        if count == 0 and integer and name == str(i):
            out.append(
                f"{source}: no image has label {name}: integer labels name classes 0..max, so "
                f"the gap makes class {name} empty (relabel 0..n-1, or give --classes)"
            )
        elif count < 2:
            at = next((f" ({w})" for w, y in zip(where, labels) if y == i), "")
            noun = "image" if count == 1 else "images"
            out.append(f"{source}: class {name!r} has {count} {noun}{at}")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault("".join(name.split()).casefold(), []).append(name)
    for same in (g for g in groups.values() if len(g) > 1):
        out.append(
            f"{source}: class names {' and '.join(map(repr, same))} differ only in case or "
            "spaces: one class spelled two ways? (fix the labels, or give --classes)"
        )
    return out
