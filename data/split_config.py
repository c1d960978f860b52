"""How to split a database among clients: `SplitConfig`, its methods and the split flags
(data/partition.py and main.py) that make it."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass

from data.split_methods import SplitError

SPLIT_METHODS = ("iid", "by_labels_split", "pathological_split", "natural", "by_site")


NATURAL = ("natural", "by_site")  # one client per database file


@dataclass(frozen=True)
class SplitConfig:
    """How to split a database among clients (flag names as in the paper's scripts)."""

    split_method: str = "by_labels_split"
    n_clients: int = 10
    alpha: float = 0.3
    n_components: int = -1
    n_shards: int = 2
    s_frac: float = 1.0
    test_data_frac: float = 0.2
    val_frac: float = 0.2
    seed: int = 202502

    def __post_init__(self) -> None:
        if self.split_method not in SPLIT_METHODS:
            raise SplitError(
                f"--split_method must be one of {SPLIT_METHODS}, got {self.split_method!r}"
            )
        if self.n_clients < 1:
            raise SplitError(f"--n_clients must be >= 1, got {self.n_clients}")
        if not self.alpha > 0:
            raise SplitError(f"--alpha must be > 0, got {self.alpha}")
        if self.n_components == 0 or self.n_components < -1:
            raise SplitError(
                f"--n_components must be -1 (one per class) or >= 1, got {self.n_components}"
            )
        if self.n_shards < 1:
            raise SplitError(f"--n_shards must be >= 1, got {self.n_shards}")
        if not self.s_frac > 0:
            raise SplitError(
                f"--s_frac must be > 0 (a fraction, or a number of samples), got {self.s_frac}"
            )
        if self.s_frac > 1 and self.s_frac != int(self.s_frac):
            raise SplitError(
                f"--s_frac above 1 is a number of samples and must be whole, got {self.s_frac}"
            )
        if not 0 < self.test_data_frac < 1:
            raise SplitError(f"--test_data_frac must lie in (0, 1), got {self.test_data_frac}")
        if not 0 <= self.val_frac < 1:
            raise SplitError(f"--val_frac must lie in [0, 1), got {self.val_frac}")
        if self.seed < 0:
            raise SplitError(f"the split seed must be >= 0, got {self.seed}")

    def key(self) -> str:
        """A short stable name for files made with these arguments."""
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.split_method}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The partition flags, shared by this CLI and main.py."""
    d = SplitConfig()
    g = parser.add_argument_group("client partition")
    g.add_argument(
        "--split_method",
        choices=SPLIT_METHODS,
        default=d.split_method,
        help="how samples are dealt to clients: iid; by_labels_split (label Dirichlet); "
        "pathological_split (class shards); natural (one client per database "
        "file, e.g. per Camelyon17 hospital); by_site (one client per site of a database made "
        f"from a manifest with a site column). Default: {d.split_method}",
    )
    g.add_argument(
        "--n_clients",
        type=int,
        default=d.n_clients,
        help=f"number of clients (ignored by natural and by_site). Default: {d.n_clients}",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help=f"Dirichlet concentration of by_labels_split; smaller is more skewed. "
        f"Default: {d.alpha}",
    )
    g.add_argument(
        "--n_components",
        type=int,
        default=d.n_components,
        help="label clusters of by_labels_split; -1 is one cluster per class. Default: -1",
    )
    g.add_argument(
        "--n_shards",
        type=int,
        default=d.n_shards,
        help=f"shards (hence at most classes) per client in pathological_split. "
        f"Default: {d.n_shards}",
    )
    g.add_argument(
        "--s_frac",
        type=float,
        default=d.s_frac,
        help="fraction (<= 1) or number (> 1) of the database's samples to use. Default: 1.0",
    )
    g.add_argument(
        "--test_data_frac",
        type=float,
        default=d.test_data_frac,
        help=f"fraction of each client's samples held out for test, per class. "
        f"Default: {d.test_data_frac}",
    )
    g.add_argument(
        "--val_frac",
        type=float,
        default=d.val_frac,
        help=f"fraction of each client's training samples held out for validation "
        f"(chooses lambda). Default: {d.val_frac}",
    )


def split_config_from_args(args: argparse.Namespace, seed: int) -> SplitConfig:
    """Build a SplitConfig from parsed flags."""
    return SplitConfig(
        split_method=args.split_method,
        n_clients=args.n_clients,
        alpha=args.alpha,
        n_components=args.n_components,
        n_shards=args.n_shards,
        s_frac=args.s_frac,
        test_data_frac=args.test_data_frac,
        val_frac=args.val_frac,
        seed=seed,
    )
