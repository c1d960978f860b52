"""One step's batches of K stacked clients (the vectorized path, vectorized.py): each client's
Poisson draw from its own generator, as its `_batches` draws it (per record, or per patient
with all its records), and at the patient unit each sample's clipping group."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from algorithms.federation.stacked import pad_rows
from algorithms.privacy.dp_client import DPSGDClient
from algorithms.privacy.dp_sgd import poisson_mask


class Batch:
    """One step's batches of all clients: `idx` (K, b) row indices (padded slots hold any
    index), `mask` (K, b) 1.0 where a slot holds a sample, `counts` the batch sizes, `groups`
    (K, b) at the patient unit each sample's patient in its client's batch (0..k-1, padded slots
    0), else None."""

    def __init__(self, idx: torch.Tensor, counts: list[int], groups: torch.Tensor | None = None):
        self.idx, self.counts, self.groups = idx, counts, groups
        width = torch.arange(idx.shape[1], device=idx.device)
        self.mask = (width < torch.tensor(counts, device=idx.device)[:, None]).float()


def poisson_draw(client: DPSGDClient, rate: float) -> torch.Tensor:
    """Which of the client's records its next Poisson batch holds (a boolean mask), drawn from
    its generator as its `_batches` draws it: each record, or each patient with all its
    records (`patient_poisson_batch`), with probability `rate`."""
    if client.patients is None:
        return poisson_mask(client.n, rate, client.rng_batches)
    return poisson_mask(client.n_units, rate, client.rng_batches)[client.patients]


def batch_groups(
    clients: Sequence[DPSGDClient], idx: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """Each drawn sample's patient in its client's batch, 0..k-1 (`patient_poisson_batch`'s
    groups), padded with 0: (K, b). Every client needs its patients (the patient unit)."""
    rows = []
    for k, (client, n) in enumerate(zip(clients, counts)):
        if client.patients is None:
            raise ValueError(f"client {client.id}: per-patient groups need patient ids")
        rows.append(torch.unique(client.patients[idx[k, :n]], return_inverse=True)[1])
    return pad_rows(rows, idx.shape[1])


def with_fake_groups(batch: Batch, width: int) -> torch.Tensor | None:
    """The clipping groups of DP-CGAN's discriminator batches at the patient unit (as
    CGANClient's `_groups`): each real sample's patient, then each of `width` fake slots a group
    of its own after its client's patients (None: per sample)."""
    if batch.groups is None:
        return None
    counts = torch.tensor(batch.counts, device=batch.groups.device)
    first = torch.where(counts > 0, batch.groups.max(dim=1).values + 1, 0)
    fakes = first[:, None] + torch.arange(width, device=first.device)
    return torch.cat([batch.groups, fakes], dim=1)
