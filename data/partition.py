"""Split an embedding database among simulated clients, with per-client train/val/test splits.

Usage (also called by main.py, which creates or reuses the split file):

    python data/partition.py --database_root DB --split_method by_labels_split \
        --n_clients 10 --alpha 0.3 --seed 202502 [--output FILE]

The split is a JSON file: its arguments, a fingerprint of the database, per-client index lists
(rows of the database's files concatenated in meta.json order) and per-client class counts.
The same arguments on the same database give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from data.database import Database, DatabaseError, load_database
from utils.cli import OutputError, Parser, check_output
from utils.io import read_json, write_json

SPLIT_METHODS = ("iid", "by_labels_split", "pathological_split", "natural", "by_site")
NATURAL = ("natural", "by_site")  # one client per database file
SPLIT_FORMAT = 1


class SplitError(ValueError):
    """A split cannot be made or read; the message names the flag or file and the problem."""


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


# ---------------------------------------------------------------------------------------------
# Splitting functions: each takes row indices (and their labels) and returns one array per client.


def subsample(indices: np.ndarray, s_frac: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a fraction (s_frac <= 1) or a number (s_frac > 1) of `indices`, sorted."""
    n = len(indices)
    keep = round(s_frac * n) if s_frac <= 1 else int(s_frac)
    if keep > n:
        raise SplitError(f"--s_frac asks for {keep} samples but only {n} are available")
    if keep == n:
        return np.sort(indices)
    return np.sort(rng.choice(indices, size=keep, replace=False))


def iid_split(indices: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and deal the indices into `n_clients` near-equal parts."""
    return [np.sort(part) for part in np.array_split(rng.permutation(indices), n_clients)]


def dirichlet_label_split(
    indices: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    n_clients: int,
    alpha: float,
    n_components: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Label-Dirichlet split (FedEM / kNN-Per): classes are grouped into clusters, and each
    cluster is dealt to the clients with proportions drawn from Dirichlet(alpha)."""
    n_clusters = n_classes if n_components == -1 else min(n_components, n_classes)
    classes = rng.permutation(n_classes)
    cluster_of = np.empty(n_classes, dtype=np.int64)
    for cluster, members in enumerate(np.array_split(classes, n_clusters)):
        cluster_of[members] = cluster
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for cluster in range(n_clusters):
        members = rng.permutation(indices[cluster_of[labels] == cluster])
        weights = rng.dirichlet(alpha * np.ones(n_clients))
        counts = rng.multinomial(len(members), weights)
        for client, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def pathological_split(
    indices: np.ndarray,
    labels: np.ndarray,
    n_clients: int,
    n_shards: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Shard split (McMahan et al.): each class is cut into shards (shards never span two
    classes), and every client receives `n_shards` shards: it holds at most `n_shards` classes."""
    present, sizes = np.unique(labels, return_counts=True)
    total = n_clients * n_shards
    # Shards per class proportional to class size (largest remainder), at least one when possible.
    share = sizes / sizes.sum() * total
    per_class = np.floor(share).astype(int)
    if total >= len(present):
        per_class = np.maximum(per_class, 1)
    while per_class.sum() > total:
        per_class[np.argmax(per_class - share)] -= 1
    order = np.argsort(-(share - per_class))
    i = 0
    while per_class.sum() < total:
        per_class[order[i % len(order)]] += 1
        i += 1
    per_class = np.minimum(per_class, sizes)
    shards = []
    for cls, k in zip(present, per_class):
        if k > 0:
            shards.extend(np.array_split(rng.permutation(indices[labels == cls]), k))
    shards = [shards[j] for j in rng.permutation(len(shards))]
    return [
        np.sort(
            np.concatenate(shards[c * n_shards : (c + 1) * n_shards] or [np.empty(0, np.int64)])
        )
        for c in range(n_clients)
    ]


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `frac` of every class (rounded half up per class); return (kept, held_out)."""
    kept, held = [], []
    for cls in np.unique(labels):
        members = rng.permutation(indices[labels == cls])
        n_held = int(np.floor(frac * len(members) + 0.5))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    if not kept:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


# ---------------------------------------------------------------------------------------------


def _fingerprint(labels: np.ndarray, sources: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(sources, dtype=np.int64).tobytes())
    return digest.hexdigest()


def database_fingerprint(db: Database) -> str:
    """What identifies a database's content for its splits and runs (its labels and sources)."""
    _, labels, sources = db.pooled()
    return _fingerprint(labels, sources)


def make_split(
    labels: np.ndarray,
    sources: np.ndarray,
    n_classes: int,
    cfg: SplitConfig,
    source_names: list[str] | None = None,
) -> dict:
    """Split rows among clients as `cfg` says; returns the JSON-ready split description."""
    labels = np.asarray(labels, dtype=np.int64)
    sources = np.asarray(sources, dtype=np.int64)
    n_sources = int(sources.max()) + 1 if len(sources) else 0
    source_names = source_names or [str(i) for i in range(n_sources)]
    rng = np.random.default_rng(cfg.seed)
    all_idx = np.arange(len(labels))

    if cfg.split_method in NATURAL:
        if cfg.s_frac <= 1:
            pools = [subsample(all_idx[sources == s], cfg.s_frac, rng) for s in range(n_sources)]
        else:
            per = int(cfg.s_frac) // max(n_sources, 1)
            pools = [
                subsample(all_idx[sources == s], min(per, int((sources == s).sum())), rng)
                for s in range(n_sources)
            ]
        names = list(source_names)
    else:
        pool = subsample(all_idx, cfg.s_frac, rng)
        if cfg.n_clients > len(pool):
            raise SplitError(
                f"--n_clients {cfg.n_clients} is more than the {len(pool)} samples to split"
            )
        if cfg.split_method == "iid":
            pools = iid_split(pool, cfg.n_clients, rng)
        elif cfg.split_method == "by_labels_split":
            pools = dirichlet_label_split(
                pool, labels[pool], n_classes, cfg.n_clients, cfg.alpha, cfg.n_components, rng
            )
        else:
            pools = pathological_split(pool, labels[pool], cfg.n_clients, cfg.n_shards, rng)
        names = [str(i) for i in range(len(pools))]

    clients, counts, dropped = [], [], []
    for cid, pool in enumerate(pools):
        train, test = stratified_split(pool, labels[pool], cfg.test_data_frac, rng)
        train, val = stratified_split(train, labels[train], cfg.val_frac, rng)
        if len(train) == 0 or len(test) == 0:
            empty = "train" if len(train) == 0 else "test"
            reason = f"empty {empty} set ({len(pool)} samples in all)"
            if cfg.split_method == "by_site":
                raise SplitError(
                    f"--split_method by_site: site {names[cid]!r} has too few images to split "
                    f"({reason}; --test_data_frac {cfg.test_data_frac}, --s_frac {cfg.s_frac})"
                )
            warnings.warn(f"client {cid} dropped: {reason}", stacklevel=2)
            dropped.append({"id": cid, "name": names[cid], "reason": reason})
            continue
        part = {"train": train, "val": val, "test": test}
        clients.append({"id": cid, "name": names[cid], **{k: v.tolist() for k, v in part.items()}})
        counts.append(
            {
                "id": cid,
                **{
                    k: np.bincount(labels[v], minlength=n_classes).tolist() for k, v in part.items()
                },
            }
        )
    if not clients:
        raise SplitError(
            f"the split leaves every client without train or test data "
            f"(--split_method {cfg.split_method}, --n_clients {cfg.n_clients}, "
            f"--s_frac {cfg.s_frac})"
        )
    return {
        "format": SPLIT_FORMAT,
        "args": asdict(cfg),
        "database": {
            "n_samples": len(labels),
            "n_classes": n_classes,
            "sources": source_names,
            "fingerprint": _fingerprint(labels, sources),
        },
        "clients": clients,
        "class_counts": counts,
        "dropped": dropped,
    }


def split_database(db: Database, cfg: SplitConfig) -> dict:
    """Split a loaded database; `natural` makes one client per database file, `by_site` one per
    site (the files of a database made from a manifest with a site column), named by site."""
    _, labels, sources = db.pooled()
    names = [f.name for f in db.files]
    if cfg.split_method == "by_site":
        info = db.meta.get("files", {})
        sites = [info.get(n, {}).get("site") if isinstance(info, dict) else None for n in names]
        if any(s is None for s in sites):
            raise SplitError(
                f"--split_method by_site: {db.root} records no site for file "
                f"{names[sites.index(None)]!r} (make the database from a manifest with a site "
                "column, or use --split_method natural for one client per file)"
            )
        names = [str(s) for s in sites]
    split = make_split(labels, sources, db.n_classes, cfg, names)
    split["database"]["root"] = str(db.root)
    return split


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_split(split: dict, db: Database, path: str | Path) -> None:
    """Refuse a split file that was made for another database or is malformed: every client needs
    a unique integer id, train and test rows, and row indices that are integers in range and
    used once across all clients and parts."""

    def refuse(what: str) -> NoReturn:
        raise SplitError(f"{path}: {what}")

    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT:
        refuse(f"not a split file made by data/partition.py (no 'format': {SPLIT_FORMAT})")
    info, clients = split.get("database"), split.get("clients")
    if not (
        isinstance(info, dict) and isinstance(clients, list) and isinstance(split.get("args"), dict)
    ):
        refuse("not a split file made by data/partition.py (needs 'args', 'database', 'clients')")
    _, labels, sources = db.pooled()
    if info.get("fingerprint") != _fingerprint(labels, sources):
        refuse(f"split was made for a different database than {db.root}")
    if not clients:
        refuse("lists no client")
    used = np.zeros(len(labels), dtype=bool)
    ids = set()
    for client in clients:
        cid = client.get("id") if isinstance(client, dict) else None
        if not _is_int(cid) or cid in ids:
            refuse(f"client id {cid!r} is not a unique integer")
        ids.add(cid)
        for part in ("train", "val", "test"):
            rows = client.get(part)
            if not isinstance(rows, list) or not all(_is_int(i) for i in rows):
                refuse(f"client {cid} '{part}' must be a list of row indices")
            idx = np.asarray(rows, dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
                refuse(
                    f"client {cid} '{part}' indices out of range "
                    f"(the database has {len(labels)} rows)"
                )
            if len(np.unique(idx)) != len(idx) or used[idx].any():
                refuse(f"client {cid} '{part}' uses a row twice (parts must not overlap)")
            used[idx] = True
        if not client["train"] or not client["test"]:
            refuse(f"client {cid} has no train or no test rows")


def load_split(path: str | Path, db: Database) -> dict:
    """Read a split file and check it against the database."""
    try:
        split = read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise SplitError(str(err)) from None
    check_split(split, db, path)
    return split


def default_split_path(database_root: str | Path, cfg: SplitConfig) -> Path:
    """Where main.py keeps the split of `cfg` for a database: named by its arguments."""
    return Path(database_root) / "splits" / f"{cfg.key()}.json"


def load_or_make_split(
    db: Database, cfg: SplitConfig, path: str | Path | None = None
) -> tuple[dict, Path]:
    """Reuse the split file for these arguments if it exists, otherwise make and save it."""
    path = Path(path) if path is not None else default_split_path(db.root, cfg)
    if path.exists():
        split = load_split(path, db)
        if split["args"] != asdict(cfg):
            raise SplitError(
                f"{path}: split was made with other arguments ({split['args']}), not {asdict(cfg)}"
            )
        return split, path
    split = split_database(db, cfg)
    try:
        write_json(path, split)
    except OSError as err:
        raise SplitError(f"{path}: cannot write the split file ({err.strerror or err})") from None
    return split, path


def format_class_counts(split: dict, classes: list[str] | None = None) -> str:
    """A plain-text table of per-client sample counts per class and split."""
    counts = split["class_counts"]
    n_classes = len(counts[0]["train"]) if counts else 0
    head = ["client", "split", *(str(i) for i in range(n_classes)), "total"]
    rows = []
    for c in counts:
        for part in ("train", "val", "test"):
            rows.append([str(c["id"]), part, *(str(v) for v in c[part]), str(sum(c[part]))])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    if classes:
        lines.append("classes: " + ", ".join(f"{i}={name}" for i, name in enumerate(classes)))
    for d in split.get("dropped", []):
        lines.append(f"dropped client {d['id']}: {d['reason']}")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        description="Split an embedding database among clients and write the split as JSON."
    )
    parser.add_argument(
        "--database_root",
        required=True,
        help="database folder made by data/create_db.py (holds meta.json)",
    )
    add_split_arguments(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=202502,
        help="split seed (kept apart from the run seed). Default: 202502, as the paper",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="split file to write. Default: <database_root>/splits/<method>_<hash>.json",
    )
    args = parser.parse_args(argv)

    def make(db: Database) -> tuple[dict, Path]:
        if args.seed < 0:
            raise SplitError(f"--seed must be >= 0, got {args.seed}")
        cfg = split_config_from_args(args, args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            split = split_database(db, cfg)
        return split, Path(args.output) if args.output else default_split_path(db.root, cfg)

    return write_split_file(args.database_root, args.output, make)


def write_split_file(
    database_root: str, output: str | None, make: Callable[[Database], tuple[dict, Path]]
) -> int:
    """The end of a split CLI (this one, data/site_split.py): make the split of the database
    and its path (`make`), write it, print its class counts. Exit status 0, or 2 after one line
    naming the flag or file."""
    try:
        if output:
            check_output(output, "--output")
        db = load_database(database_root)
        split, path = make(db)
        write_json(path, split)
    except (SplitError, DatabaseError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the split file: {err}", file=sys.stderr)
        return 2
    print(format_class_counts(split, db.classes))
    print(f"wrote {path} ({len(split['clients'])} clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
