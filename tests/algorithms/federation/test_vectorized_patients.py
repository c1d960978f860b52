"""The vectorized path at the patient unit (user-level DP-SGD) against the per-client path: the
same per-patient Poisson draws and clipping groups, the same per-patient clipped sums, and the
same training and accounting up to float32 rounding."""

import json

import numpy as np
import pytest
import torch
from helpers.databases import make_patient_db
from helpers.tiny import FAST, tiny
from torch import nn

import main as main_module
from algorithms.federation.rounds import Rounds, run_federation
from algorithms.federation.stacked import forward, pad_rows, stack
from algorithms.federation.stacked_batches import Batch, with_fake_groups
from algorithms.federation.vectorized import run_vectorized
from algorithms.methods.generative import make_clients, seeded_global_weights
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.ghost_clipping import (
    LinearTape,
    Recorded,
    clip_and_sum_linear,
    clip_and_sum_stacked,
)
from data.clients import ClientData
from data.features import standardize_records

# auto: the patient unit on data with ids; a norm that clips some patients' sums, not all
DP = DPConfig(accountant="rdp", max_grad_norm=0.3)
SIZES = (30, 19, 45)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def _data(n: int, cid: int, dim: int = 6) -> ClientData:
    """n records of patients of 1 to 4 records (ids not in record order), 2 val and 2 test."""
    rng = np.random.default_rng(cid)
    x = standardize_records(rng.normal(size=(n + 4, dim)))
    y = rng.integers(0, 3, size=n + 4)
    patients = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 5, size=n))[:n]) + 7
    return ClientData(
        cid, x[:n], y[:n], x[n : n + 2], y[n : n + 2], x[n + 2 :], y[n + 2 :], patients
    )


@pytest.mark.parametrize("clip", [1e-3, 1e3, 0.3])
def test_stacked_per_patient_clipped_sums_equal_each_clients_own(clip):
    """Clients with batches of 7, 0 and 12 samples in patients: each row of the stacked clipped
    sum is that client's `clip_and_sum_linear` with its groups (all, none, some clipped)."""
    sizes, groups = [7, 0, 12], [[0, 0, 1, 2, 2, 2, 3], [], [0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5, 6]]
    models = []
    for k in range(3):
        torch.manual_seed(k)
        models.append(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(n, 5, generator=g) for n in sizes]
    ys = [torch.randint(0, 3, (n,), generator=g) for n in sizes]
    gs = [torch.tensor(row, dtype=torch.int64) for row in groups]
    own = []
    for model, x, y, grp in zip(models, xs, ys, gs):
        tape = LinearTape(model)
        loss = nn.functional.cross_entropy(Recorded(model, tape)(x), y, reduction="none")
        if len(x):
            clip_and_sum_linear(tape.take(), loss, clip, grp)
            own.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        else:
            own.append(None)
    layout, flat = stack(models, torch.device("cpu"))
    mask = (torch.arange(12) < torch.tensor(sizes)[:, None]).float()

    def stacked_sum(groups):
        records: list = []
        out = forward(models[0], "", layout.views(flat), pad_rows(xs, 12), records)
        loss = nn.functional.cross_entropy(out.transpose(1, 2), pad_rows(ys, 12), reduction="none")
        return clip_and_sum_stacked(records, loss * mask, clip, layout, groups)

    stacked = stacked_sum(pad_rows(gs, 12))
    for k, row in enumerate(own):
        if row is None:
            assert torch.equal(stacked[k], torch.zeros_like(stacked[k]))
        else:
            assert _rel(row, stacked[k]) <= 1e-6
    if clip < 1:  # per sample, the same batches give another sum where clipping binds
        assert _rel(stacked_sum(None), stacked) > 1e-2


def test_fake_samples_follow_each_clients_patients_as_groups_of_their_own():
    batch = Batch(torch.zeros(3, 4, dtype=torch.int64), [3, 0, 4], torch.tensor(
        [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 2]]))  # fmt: skip
    assert with_fake_groups(batch, 2).tolist() == [
        [0, 1, 1, 0, 2, 3],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 1, 2, 3, 4],
    ]
    assert with_fake_groups(Batch(torch.zeros(1, 2, dtype=torch.int64), [2]), 3) is None


def _train(method: str, vectorized: bool, cfg: GenerativeConfig):
    data = [_data(n, i) for i, n in enumerate(SIZES)]
    clients = make_clients(method=method, clients=data, n_classes=3, cfg=cfg, dp=DP, seed=2)
    start = seeded_global_weights(method, 6, 3, cfg, seed=0)
    run = run_vectorized if vectorized else run_federation
    weights, history = run(clients, start, Rounds(cfg.n_rounds))
    return clients, weights, history


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_vectorized_patient_level_training_equals_per_client_training(method):
    """Clients of patients of 1-4 records, different sizes, rates and noise: the same shared
    weights and DP-trained network up to rounding, the same accounting (per patient) exactly,
    the same random streams afterwards."""
    cfg = (
        GenerativeConfig(n_rounds=3, local_epochs=2, batch_size=4, hidden_dim=16, latent_dim=4)
        if method == "dpcvae"
        else GenerativeConfig(n_rounds=2, local_epochs=1, batch_size=4)
    )
    (ref, w_ref, h_ref), (vec, w_vec, h_vec) = (_train(method, v, cfg) for v in (False, True))
    assert all(c.unit == "patient" and c.n_units < c.n for c in ref)
    # measured: the DP-trained networks ~1e-6 (the groups' Gram sums add in another order than
    # the per-client path's), the CGAN's generator (no clipping, no noise) ~1e-5
    tight, loose = 5e-6, (5e-6 if method == "dpcvae" else 2e-5)
    for k in w_ref:
        assert _rel(w_ref[k], w_vec[k]) <= loose, k
    for a, b in zip(ref, vec):
        private = (a.model, b.model) if method == "dpcvae" else (a.discriminator, b.discriminator)
        for p, q in zip(private[0].parameters(), private[1].parameters()):
            assert _rel(p, q) <= tight
        assert a.privacy() == b.privacy() and a.privacy()["unit"] == "patient"
        for name in ("rng_batches", "rng_noise", "rng_latent"):
            assert torch.equal(getattr(a, name).get_state(), getattr(b, name).get_state())
    for r, v in zip(h_ref, h_vec):
        assert r["train_loss"] == pytest.approx(v["train_loss"], rel=1e-6)


def test_a_vectorized_run_at_auto_on_data_with_ids_is_the_per_client_patient_run(tmp_path):
    db = make_patient_db(tmp_path / "db")
    out = {}
    for path in ("off", "on"):
        argv = ["--database_root", db, "--results_dir", tmp_path / path, "--method", "dpcvae"]
        argv += [*FAST, *tiny("dpcvae", gen_batch_size=8, accountant="rdp")]
        assert main_module.main([*argv, "--vectorized", path, "--device", "cpu"]) == 0
        out[path] = json.loads((tmp_path / path / "metrics.json").read_text())
    assert out["on"]["privacy"] == out["off"]["privacy"]
    assert out["on"]["privacy"]["unit"] == "patient"
    assert out["on"]["config_key"] == out["off"]["config_key"]
