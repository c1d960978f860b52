"""The clients of a simulation: each one's embeddings and labels, split into train/val/test.

`ClientData` is what every algorithm trains and evaluates on; `client_datasets` cuts it out of a
database with a split file (data/partition.py makes those)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.database import Database
from data.features import standardize_records
from data.patients import patient_facts


@dataclass(frozen=True)
class ClientData:
    """One client's embeddings (per-record standardized) and labels for each split."""

    id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    patients_train: np.ndarray | None = None  # each training record's patient (None: no ids)

    @property
    def n_train(self) -> int:
        return len(self.y_train)


def pooled_test(clients: list[ClientData]) -> tuple[np.ndarray, np.ndarray]:
    """The test data of every client, pooled (a simulation's second evaluation: each client's
    model on patients unlike its own)."""
    return (
        np.concatenate([c.x_test for c in clients]),
        np.concatenate([c.y_test for c in clients]),
    )


def client_datasets(db: Database, split: dict) -> list[ClientData]:
    """Per-client arrays for a split, with every embedding standardized per record."""
    x, y, _ = db.pooled()
    u = standardize_records(x)
    patients = db.patients()
    out = []
    for c in split["clients"]:
        tr, va, te = (np.asarray(c[k], dtype=np.int64) for k in ("train", "val", "test"))
        p = None if patients is None else patients[tr]
        out.append(ClientData(int(c["id"]), u[tr], y[tr], u[va], y[va], u[te], y[te], p))
    return out


def training_patients(clients: list[ClientData]) -> dict | None:
    """The patients of the clients' training data (a patient is at one client): their number
    and records per patient (median, max); None without patient ids."""
    if not clients or any(c.patients_train is None for c in clients):
        return None
    return patient_facts(np.concatenate([c.patients_train for c in clients]))
