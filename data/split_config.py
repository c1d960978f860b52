"""How to split a database among clients: `SplitConfig`, its methods and the split flags
(data/partition.py and main.py) that make it."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

from utils.cli import add_flags, flag, flag_name, flagged_fields

SPLIT_METHODS = ("iid", "by_labels_split", "pathological_split", "natural", "by_site")


NATURAL = ("natural", "by_site")  # one client per database file


class SplitError(ValueError):
    """A split cannot be made or read; the message names the flag or file and the problem."""


def _split(default, *names: str, help: str, **kwargs):  # noqa: A002 (argparse's name)
    """A split field and its flag (every method reads the split: no section)."""
    return field(default=default, metadata=flag(*names, help=help, **kwargs))


@dataclass(frozen=True)
class SplitConfig:
    """How to split a database among clients (flag names as in the paper's scripts). Each
    field but the seed carries its flag (utils.cli.flag): the split flags of main.py and of
    data/partition.py are built from these records."""

    split_method: str = _split(
        "by_labels_split",
        "--split_method",
        choices=SPLIT_METHODS,
        help="how samples are dealt to clients: iid; by_labels_split (label Dirichlet); "
        "pathological_split (class shards); natural (one client per database "
        "file, e.g. per Camelyon17 hospital); by_site (one client per site of a database made "
        "from a manifest with a site column). Default: {default}",
    )
    n_clients: int = _split(
        10,
        "--n_clients",
        help="number of clients (ignored by natural and by_site). Default: {default}",
    )
    alpha: float = _split(
        0.3,
        "--alpha",
        help="Dirichlet concentration of by_labels_split; smaller is more skewed. "
        "Default: {default}",
    )
    n_components: int = _split(
        -1,
        "--n_components",
        help="label clusters of by_labels_split; -1 is one cluster per class. Default: {default}",
    )
    n_shards: int = _split(
        2,
        "--n_shards",
        help="shards (hence at most classes) per client in pathological_split. Default: {default}",
    )
    s_frac: float = _split(
        1.0,
        "--s_frac",
        help="fraction (<= 1) or number (> 1) of the database's samples to use (patients, when "
        "it has patient ids). Default: {default}",
    )
    test_data_frac: float = _split(
        0.2,
        "--test_data_frac",
        help="fraction of each client's samples held out for test, per class. Default: {default}",
    )
    val_frac: float = _split(
        0.2,
        "--val_frac",
        help="fraction of each client's training samples held out for validation "
        "(chooses lambda). Default: {default}",
    )
    seed: int = 202502  # from --split_seed (main.py) or --seed (data/partition.py)

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        if self.split_method not in SPLIT_METHODS:
            raise SplitError(
                f"{name('split_method')} must be one of {SPLIT_METHODS}, got {self.split_method!r}"
            )
        if self.n_clients < 1:
            raise SplitError(f"{name('n_clients')} must be >= 1, got {self.n_clients}")
        if not self.alpha > 0:
            raise SplitError(f"{name('alpha')} must be > 0, got {self.alpha}")
        if self.n_components == 0 or self.n_components < -1:
            raise SplitError(
                f"{name('n_components')} must be -1 (one per class) or >= 1, "
                f"got {self.n_components}"
            )
        if self.n_shards < 1:
            raise SplitError(f"{name('n_shards')} must be >= 1, got {self.n_shards}")
        if not self.s_frac > 0:
            raise SplitError(
                f"{name('s_frac')} must be > 0 (a fraction, or a number of samples), "
                f"got {self.s_frac}"
            )
        if self.s_frac > 1 and self.s_frac != int(self.s_frac):
            raise SplitError(
                f"{name('s_frac')} above 1 is a number of samples and must be whole, "
                f"got {self.s_frac}"
            )
        if not 0 < self.test_data_frac < 1:
            raise SplitError(
                f"{name('test_data_frac')} must lie in (0, 1), got {self.test_data_frac}"
            )
        if not 0 <= self.val_frac < 1:
            raise SplitError(f"{name('val_frac')} must lie in [0, 1), got {self.val_frac}")
        if self.seed < 0:
            raise SplitError(f"the split seed must be >= 0, got {self.seed}")

    def key(self) -> str:
        """A short stable name for files made with these arguments."""
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.split_method}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def add_split_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The partition flags (shared by data/partition.py and main.py), from SplitConfig's
    records, in one --help group. Returns their actions."""
    group = parser.add_argument_group("client partition")
    return add_flags(SplitConfig, lambda section: group)


def split_config_from_args(args: argparse.Namespace, seed: int) -> SplitConfig:
    """A SplitConfig from parsed flags and the split seed."""
    values = {f.name: getattr(args, r.dest) for f, r in flagged_fields(SplitConfig)}
    return SplitConfig(**values, seed=seed)
