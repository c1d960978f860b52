"""Where the repository's files are, for the tests that read them by path."""

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
REPO = HELPERS.parents[1]  # tests/helpers/ -> the repository root
