"""The audit's canaries: out-of-distribution records orthogonal to each other in the models'
space, the client that gets them (as records, or as patients of several records), their label,
and the privacy bound of one canary."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.linalg import hadamard

from algorithms.privacy.accounting import group_bound
from data.clients import ClientData
from data.features import standardize_records


def make_canaries(
    n: int, dim: int, seed: int, avoid: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """`n` out-of-distribution records, standardized per record as every real embedding is,
    and the name of their design.

    `hadamard` (when n < H, the largest power of two <= dim): n non-constant rows of the H x H
    Hadamard matrix on H random coordinates (0 elsewhere). Their entries are +-a or 0, so the
    fixed squash keeps them exactly orthogonal and of equal norm in the space the models see:
    a member moves the decoder's output for its label along its own direction and along no other
    canary's. The rows are random, or, given `avoid` (a direction of the models' space: the
    centred mean of the real records of the canaries' label), the n rows most orthogonal to it,
    so that what the decoder learned from real data hardly projects onto any canary.
    `gaussian` otherwise: standard Gaussian vectors (nearly orthogonal in high dimension)."""
    rng = np.random.default_rng(seed)
    h = 1 << (dim.bit_length() - 1)
    if n >= h:
        return standardize_records(rng.normal(size=(n, dim))), "gaussian"
    cols = rng.choice(dim, size=h, replace=False)
    rows = hadamard(h)[1:][rng.permutation(h - 1)]
    if avoid is not None:
        rows = rows[np.argsort(np.abs(rows @ avoid[cols]), kind="stable")]
    x = np.zeros((n, dim))
    x[:, cols] = rows[:n]
    return standardize_records(x), "hadamard"


def with_canaries(data: ClientData, x: np.ndarray, label: int, records: int = 1) -> ClientData:
    """The client with canaries `x` (all of class `label`) added to its training data, each as
    `records` identical records: a canary patient. Where the client has patient ids, each canary
    is a new patient of its own (ids above every real one)."""
    x = np.repeat(x, records, axis=0)
    y = np.full(len(x), label, dtype=data.y_train.dtype)
    patients = data.patients_train
    if patients is not None:
        first = int(patients.max()) + 1 if len(patients) else 0
        new = first + np.repeat(np.arange(len(x) // records), records)
        patients = np.concatenate([patients, new.astype(patients.dtype)])
    return replace(
        data,
        x_train=np.concatenate([data.x_train, x.astype(data.x_train.dtype)]),
        y_train=np.concatenate([data.y_train, y]),
        patients_train=patients,
    )


def canary_bound(epsilon: float | None, delta: float, k: int) -> tuple[float | None, float]:
    """(epsilon, delta) of a canary of k records under a per-record (epsilon, delta): k = 1
    unchanged, k > 1 group privacy; (None, delta) when there is none or it says nothing
    (a group delta >= 1)."""
    if epsilon is None:
        return None, delta
    eps_k, delta_k = group_bound(epsilon, delta, k)
    return (eps_k, delta_k) if delta_k < 1 else (None, delta)


def canary_label(clients: list[ClientData], index: int, n_classes: int) -> int:
    """The target client's rarest class, ties going to the class rarest in the whole federation
    (whose global decoder then mixes the fewest real records into the canaries' label)."""
    own = np.bincount(clients[index].y_train, minlength=n_classes)
    total = np.sum([np.bincount(c.y_train, minlength=n_classes) for c in clients], axis=0)
    return int(np.lexsort((np.arange(n_classes), total, own))[0])
