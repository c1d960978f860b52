"""DP-FedPFT at the patient unit: each patient's records weighted to a total of 1, so adding a
patient (many identical records, or records in several classes) moves the released statistics
by at most the record-level sensitivity; the counts count patients; the report says the unit."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from algorithms.evaluation.heads import HeadConfig
from algorithms.methods.fedpft import PFTClient, run_pft
from algorithms.methods.gaussians import class_statistics, noisy_statistics, patient_weights
from algorithms.methods.pft_config import PFTConfig, sensitivity
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import standardize_records

GEN = GenerativeConfig()
DP = DPConfig(max_grad_norm=None, accountant=None, calibration=None)  # as main.py makes it
N_CLASSES, DIM = 3, 6


def _client(cid: int = 0, n: int = 40, seed: int = 0, per_patient: int = 4) -> ClientData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    x = standardize_records(rng.normal(size=(N_CLASSES, DIM))[y] + rng.normal(size=(n, DIM)))
    patients = 1000 * cid + np.arange(n) // per_patient
    return ClientData(cid, x, y, x[:4], y[:4], x[:4], y[:4], patients)


def _scaled(stats: dict) -> np.ndarray:
    """The release's scaled vector (count, sum / sqrt(D), moment / D), flattened."""
    parts = [stats["count"], stats["sum"] / math.sqrt(DIM)]
    if "moment" in stats:
        parts.append(stats["moment"] / DIM)
    return np.concatenate([p.numpy().ravel() for p in parts])


def _with_patient(data: ClientData, x: np.ndarray, y: np.ndarray, pid: int) -> ClientData:
    return replace(
        data,
        x_train=np.concatenate([data.x_train, x]),
        y_train=np.concatenate([data.y_train, y]),
        patients_train=np.concatenate([data.patients_train, np.full(len(y), pid)]),
    )


@pytest.mark.parametrize("covariance", ["diag", "full", "spherical"])
def test_a_patient_with_many_identical_records_moves_the_release_by_at_most_the_sensitivity(
    covariance,
):
    data = _client()
    worst = np.zeros((1, DIM))
    worst[0, 0] = math.sqrt(DIM)  # all its mass on one dimension: norm sqrt(D)
    cases = {
        "50 identical records": (np.repeat(worst, 50, 0), np.full(50, 2)),
        "records in every class": (np.repeat(worst, 30, 0), np.arange(30) % N_CLASSES),
    }
    for name, (x, y) in cases.items():
        big = _with_patient(data, x, y, pid=99_999)
        stats = {}
        for d in (data, big):
            client = PFTClient(
                method="dpfedpft",
                data=d,
                n_classes=N_CLASSES,
                cfg=PFTConfig(covariance=covariance),
                gen_cfg=GEN,
                dp=DP,
                seed=0,
            )
            assert client.unit == "patient"  # auto, the data has ids
            stats[d is big] = _scaled(
                class_statistics(d.x_train, d.y_train, N_CLASSES, covariance, client.weights)
            )
        moved = float(np.linalg.norm(stats[True] - stats[False]))
        assert moved <= sensitivity(covariance) + 1e-9, name
        # the patient counts once: the released counts grow by 1 in total
        assert stats[True][:N_CLASSES].sum() - stats[False][:N_CLASSES].sum() == pytest.approx(1)
        # per record, the same patient would move it by far more than the sensitivity
        per_record = _scaled(class_statistics(big.x_train, big.y_train, N_CLASSES, covariance))
        unweighted = _scaled(class_statistics(data.x_train, data.y_train, N_CLASSES, covariance))
        assert np.linalg.norm(per_record - unweighted) > 5 * sensitivity(covariance), name


def test_the_noisy_counts_count_patients_and_the_weights_sum_to_one_per_patient():
    patients = np.array([7, 7, 7, 3, 5, 5])
    w = patient_weights(patients)
    assert np.allclose(w, [1 / 3, 1 / 3, 1 / 3, 1, 0.5, 0.5])
    data = _client(n=40, per_patient=4)  # 10 patients
    release = noisy_statistics(
        x=data.x_train,
        y=data.y_train,
        n_classes=N_CLASSES,
        covariance="diag",
        noise_std=0.0,
        rng=torch.Generator().manual_seed(0),
        weights=patient_weights(data.patients_train),
    )
    assert float(release["count"].sum()) == pytest.approx(10.0)


def test_the_report_says_unit_patient_and_record_runs_are_unchanged():
    clients = [_client(i, seed=i) for i in range(3)]
    kwargs = dict(
        method="dpfedpft",
        n_classes=N_CLASSES,
        cfg=PFTConfig(),
        gen_cfg=GEN,
        head_cfg=HeadConfig(epochs=2),
        seed=1,
    )
    patient = run_pft(clients=clients, dp=DP, **kwargs).privacy
    assert patient["unit"] == "patient"
    assert all(c["unit"] == "patient" for c in patient["clients"])
    assert patient["clients"][0]["sensitivity"] == math.sqrt(3)  # the record-level one
    # without ids (auto) and with --privacy_unit record: the record unit, the same release
    bare = [replace(c, patients_train=None) for c in clients]
    record = run_pft(clients=bare, dp=DP, **kwargs)
    forced = run_pft(clients=clients, dp=replace(DP, privacy_unit="record"), **kwargs)
    assert record.privacy["unit"] == forced.privacy["unit"] == "record"
    assert "unit" not in record.privacy["clients"][0]
    assert record.privacy == forced.privacy
    assert record.fidelity == forced.fidelity  # the same release, the same synthetic data
    with pytest.raises(ValueError, match="--privacy_unit patient: the database has no patient"):
        PFTClient(
            method="dpfedpft",
            data=bare[0],
            n_classes=N_CLASSES,
            cfg=PFTConfig(),
            gen_cfg=GEN,
            dp=replace(DP, privacy_unit="patient"),
            seed=0,
        )
