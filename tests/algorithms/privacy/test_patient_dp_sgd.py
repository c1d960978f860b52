"""User-level (patient-level) DP-SGD in the fast step: each sampled patient's summed gradient
is clipped (ghost_clipping.group_sq_norms), and patients are Poisson sampled with all their
records (dp_sgd.patient_poisson_batch)."""

import pytest
import torch
from torch import nn

from algorithms.privacy.dp_sgd import patient_poisson_batch
from algorithms.privacy.ghost_clipping import LinearTape, Recorded, clip_and_sum_linear

C = 1.0


def model_and_data(n=12, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    return model, x, y


def clipped_sum(model, x, y, groups=None) -> torch.Tensor:
    """The fast path's clipped gradient sum (all parameters, flat)."""
    tape = LinearTape(model)
    out = Recorded(model, tape)(x)
    loss = nn.functional.cross_entropy(out, y, reduction="none")
    clip_and_sum_linear(tape.take(), loss, C, groups)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def reference(model, x, y, groups) -> torch.Tensor:
    """Per-sample gradients one by one, summed per patient, each sum clipped, then summed."""
    per = []
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        per.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    per = torch.stack(per)
    sums = torch.zeros(int(groups.max()) + 1, per.shape[1]).index_add_(0, groups, per)
    norms = sums.norm(dim=1, keepdim=True)
    return (sums * (C / (norms + 1e-6)).clamp(max=1.0)).sum(dim=0)


def test_per_patient_clipping_equals_clipping_each_patients_summed_gradient():
    model, x, y = model_and_data()
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 1])
    got = clipped_sum(model, x, y, groups)
    torch.testing.assert_close(got, reference(model, x, y, groups), rtol=1e-4, atol=1e-5)
    # one record per patient: the record-level clipped sum
    single = torch.arange(len(y))
    torch.testing.assert_close(clipped_sum(model, x, y, single), clipped_sum(model, x, y))


def test_a_patient_with_many_identical_records_moves_the_clipped_sum_by_at_most_c():
    model, x, y = model_and_data(n=8, seed=1)
    many = 40
    x_all = torch.cat([x, x[:1].repeat(many, 1) * 5])  # one patient: 40 copies of one image
    y_all = torch.cat([y, y[:1].repeat(many)])
    groups = torch.cat([torch.arange(8), torch.full((many,), 8)])
    with_patient = clipped_sum(model, x_all, y_all, groups)
    without = clipped_sum(model, x, y, torch.arange(8))
    assert (with_patient - without).norm() <= C + 1e-4
    # clipped per record, the same patient moves it by up to 40 C
    per_record = clipped_sum(model, x_all, y_all) - clipped_sum(model, x, y)
    assert per_record.norm() > 10 * C


def test_patients_are_poisson_sampled_with_all_their_records_at_a_per_patient_rate():
    # patient 0 has 50 records, patients 1..99 one each: the same rate for each
    patients = torch.cat([torch.zeros(50, dtype=torch.int64), torch.arange(1, 100)])
    gen = torch.Generator().manual_seed(0)
    rate, draws = 0.2, 2000
    hits = torch.zeros(100)
    for _ in range(draws):
        index, groups = patient_poisson_batch(patients, 100, rate, gen)
        drawn = patients[index]
        assert (drawn == 0).sum() in (0, 50)  # all of a patient's records, or none
        assert torch.equal(torch.unique(drawn, return_inverse=True)[1], groups)
        hits[torch.unique(drawn)] += 1
    assert abs(hits[0] / draws - rate) < 0.04  # the 50-record patient: q, not 50 q
    assert abs(hits[1:].mean() / draws - rate) < 0.01


def test_per_patient_clipping_is_refused_outside_the_fast_path():
    from algorithms.privacy.dp_sgd import PrivateTraining, dp_step

    private = PrivateTraining(None, None, None, 0.1, 1.0, "ghost")
    with pytest.raises(ValueError, match="per-patient clipping needs grad_sample_mode='fast'"):
        dp_step(private, torch.zeros(2), torch.zeros(2, dtype=torch.int64))


def test_a_cvae_client_at_the_patient_unit_counts_samples_and_accounts_patients():
    from dataclasses import replace

    import numpy as np

    from algorithms.methods.dpcgan import CGANClient
    from algorithms.methods.dpcvae import CVAEClient
    from algorithms.methods.generative import seeded_global_weights
    from algorithms.privacy.accounting import privacy_report, sample_rate_for
    from algorithms.privacy.config import DPConfig
    from algorithms.privacy.generative_config import GenerativeConfig
    from data.clients import ClientData
    from data.features import standardize_records

    cfg = GenerativeConfig(n_rounds=1, local_epochs=2, batch_size=4, hidden_dim=16, latent_dim=4)
    rng = np.random.default_rng(0)
    x = standardize_records(rng.normal(size=(64, 6)))
    y = rng.integers(0, 3, size=64)
    patients = np.repeat(np.arange(100, 116), 4)  # 16 patients of 4 records
    data = ClientData(0, x, y, x[:2], y[:2], x[:2], y[:2], patients)
    dp = DPConfig(epsilon=2.0, count_noise=0.0)  # an exact count: the rate is checked below
    client = CVAEClient(
        data=data, n_classes=3, cfg=cfg, dp=dp, seed=0
    )  # auto: patient, the data has ids
    assert (client.n, client.n_units, client.n_released) == (64, 16, 16)  # counts patients
    client.fit(seeded_global_weights("dpcvae", 6, 3, cfg, seed=0), 0)
    line = client.privacy()
    assert line["unit"] == "patient" and line["sample_rate"] == sample_rate_for(16, 4) == 0.25
    assert line["steps"] == 2 * 4 and 0 < line["epsilon"] <= 2.0
    assert privacy_report(dp, [line])["unit"] == "patient"
    # the same data per record: q per record, and the report says record
    record = CVAEClient(
        data=data, n_classes=3, cfg=cfg, dp=replace(dp, privacy_unit="record"), seed=0
    )
    assert record.n_released == 64 and "unit" not in record.privacy()
    assert CGANClient(data=data, n_classes=3, cfg=cfg, dp=dp, seed=0).unit == "patient"  # auto
    patient = replace(dp, privacy_unit="patient")
    with pytest.raises(ValueError, match="--privacy_unit patient: the database has no patient"):
        CVAEClient(data=ClientData(0, x, y, x, y, x, y), n_classes=3, cfg=cfg, dp=patient, seed=0)


def test_benchmark_quick_prints_both_units_for_each_k(capsys):
    import runpy

    from helpers.paths import REPO

    bench = runpy.run_path(str(REPO / "experiments" / "benchmarks" / "bench_patient_step.py"))
    bench["main"](["--quick", "--repeats", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [
        (k, u) for k in ("1", "5", "20") for u in ("record", "patient")
    ]
    assert all(float(r[2]) > 0 for r in rows)
