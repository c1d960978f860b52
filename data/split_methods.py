"""The ways of dividing record indices among clients: iid, Dirichlet by labels, pathological
(a few classes per client), stratified train/val/test, and subsampling."""

from __future__ import annotations

import numpy as np

from data.split_config import SplitConfig, SplitError
from utils.cli import flag_name


def subsample(indices: np.ndarray, s_frac: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a fraction (s_frac <= 1) or a number (s_frac > 1) of `indices`, sorted."""
    n = len(indices)
    keep = round(s_frac * n) if s_frac <= 1 else int(s_frac)
    if keep > n:
        raise SplitError(
            f"{flag_name(SplitConfig, 's_frac')} asks for {keep} samples but only {n} are available"
        )
    if keep == n:
        return np.sort(indices)
    return np.sort(rng.choice(indices, size=keep, replace=False))


def iid_split(indices: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and deal the indices into `n_clients` near-equal parts."""
    return [np.sort(part) for part in np.array_split(rng.permutation(indices), n_clients)]


def dirichlet_label_split(
    *,
    indices: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    n_clients: int,
    alpha: float,
    n_components: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Label-Dirichlet split (FedEM / kNN-Per): classes are grouped into clusters, and each
    cluster is dealt to the clients with proportions drawn from Dirichlet(alpha).

    Args:
        indices: the records to split.
        labels: their labels.
        n_classes: the number of classes.
        n_clients: the number of clients.
        alpha: the Dirichlet concentration.
        n_components: the clusters of classes.
        rng: the split's generator.
    """
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
