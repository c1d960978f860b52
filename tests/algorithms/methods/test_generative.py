"""DP-CVAE and DP-CGAN: what is shared, what stays local, the privacy report, no NaN."""

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant

from algorithms.evaluation.heads import HeadConfig
from algorithms.federation.rounds import Rounds, fedavg_aggregate, run_federation
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.methods.generative import seeded_global_weights
from algorithms.methods.generative_run import fidelity_report, run_generative
from algorithms.methods.synthesis import at_chance, global_synthetic_report, synthetic_label_counts
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.report import chance_warning, empty_synthetic_warning
from data.clients import ClientData
from data.features import standardize_records

CFG = GenerativeConfig(n_rounds=2, local_epochs=1, batch_size=16, hidden_dim=16, latent_dim=4)
HEAD = HeadConfig(epochs=5)


def _clients(n_clients=3, n=40, dim=8, n_classes=3, zero_dims=0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for cid in range(n_clients):
        x = rng.normal(size=(n, dim))
        x[:, :zero_dims] = 0.0
        u = standardize_records(x)
        y = rng.integers(0, n_classes, size=n)
        out.append(ClientData(cid, u[:30], y[:30], u[30:35], y[30:35], u[35:], y[35:]))
    return out


def test_spent_epsilon_is_at_most_the_target_and_recomputes_independently():
    out = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(epsilon=2.0),
        head_cfg=HEAD,
        seed=0,
    )
    report = out.privacy
    assert report["enabled"] and report["target_epsilon"] == 2.0
    assert len(report["clients"]) == 3
    assert report["count_noise"] == 20.0 and report["noise_source"] == "seeded"
    assert "run seed" in report["noise_caveat"]
    for c in report["clients"]:
        # the noisy count n~ of 30 samples at nominal batch 16 sets the rate and the steps
        n = c["n_released"]
        assert n >= 1 and n != 30  # (for these seeds)
        steps_epoch = -(-n // 16)
        assert c["sample_rate"] == 1 / steps_epoch and c["steps"] == 2 * steps_epoch
        assert c["epsilon"] <= 2.0
        fresh = PRVAccountant()  # independent of the project's cached helpers
        fresh.history = [(20.0, 1.0, 1), (c["noise_multiplier"], c["sample_rate"], c["steps"])]
        assert c["accountant_history"] == [list(h) for h in fresh.history]
        assert fresh.get_epsilon(delta=report["delta"]) == pytest.approx(c["epsilon"], rel=1e-9)
    assert report["epsilon_max"] == max(c["epsilon"] for c in report["clients"])
    assert np.isfinite(out.fidelity["wasserstein_mean"])
    assert {"precision_mean", "recall_mean", "density_mean", "coverage_mean"} <= set(out.fidelity)
    assert "epsilon_max" in out.history[-1] and out.history[-1]["epsilon_max"] == pytest.approx(
        report["epsilon_max"]
    )


def test_only_the_decoder_is_shared_and_encoders_stay_local():
    clients = [
        CVAEClient(data=c, n_classes=3, cfg=CFG, dp=DPConfig(), seed=c.id) for c in _clients()
    ]
    start = seeded_global_weights("dpcvae", 8, 3, CFG, seed=9)
    encoders_before = [
        {k: v.clone() for k, v in c.model.encoder.state_dict().items()} for c in clients
    ]
    updates = [c.fit(start, 0) for c in clients]
    assert all(set(u.weights) == set(start) for u in updates)
    assert all(k.startswith("decoder.") for k in start)
    merged = fedavg_aggregate(updates)
    for c, before in zip(clients, encoders_before):
        c.fit(merged, 1)
        # the encoder trained locally (changed) but was never replaced by anything shared
        after = c.model.encoder.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    enc = [c.model.encoder.state_dict()["0.weight"] for c in clients]
    assert not torch.equal(enc[0], enc[1])


def test_fit_starts_from_the_global_decoder():
    client = CVAEClient(data=_clients()[0], n_classes=3, cfg=CFG, dp=DPConfig(), seed=0)
    start = seeded_global_weights("dpcvae", 8, 3, CFG, seed=3)
    seen = {}
    original = client._batches

    def spy():
        seen.update({k: v.clone() for k, v in client.model.decoder.state_dict().items()})
        yield from original()

    client._batches = spy
    client.fit(start, 0)
    for k, v in seen.items():
        torch.testing.assert_close(v, start[f"decoder.{k}"])


def test_dpcgan_generator_starts_each_round_from_the_averaged_generator():
    clients = [
        CGANClient(data=c, n_classes=3, cfg=CFG, dp=DPConfig(), seed=c.id) for c in _clients()
    ]
    starts = []
    for c in clients:
        original = c._batches

        def spy(c=c, original=original):
            starts.append({k: v.clone() for k, v in c.generator.state_dict().items()})
            yield from original()

        c._batches = spy
    averaged = []
    run_federation(
        clients,
        seeded_global_weights("dpcgan", 8, 3, CFG, 0),
        Rounds(3, on_round=lambda r, w, u: averaged.append({k: v.clone() for k, v in w.items()})),
    )
    assert len(starts) == 9 and len(averaged) == 3
    for rnd in (1, 2):
        for start in starts[3 * rnd : 3 * rnd + 3]:
            for k, v in start.items():
                torch.testing.assert_close(v, averaged[rnd - 1][k])
    # and the averaged generator is not a fresh initialization
    fresh = seeded_global_weights("dpcgan", 8, 3, CFG, 0)
    assert any(not torch.equal(fresh[k], averaged[0][k]) for k in fresh)


def test_dpcgan_shares_the_generator_only_and_reports_privacy():
    out = run_generative(
        method="dpcgan",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(),
        head_cfg=HEAD,
        seed=1,
    )
    assert out.privacy["enabled"] and out.privacy["epsilon_max"] <= 1.0
    clients = [CGANClient(data=c, n_classes=3, cfg=CFG, dp=DPConfig(), seed=0) for c in _clients(1)]
    update = clients[0].fit(seeded_global_weights("dpcgan", 8, 3, CFG, 0), 0)
    assert set(update.weights) == set(clients[0].generator.state_dict())


def test_constant_dimensions_give_no_nan():
    # a ReLU backbone gives many dimensions that are exactly zero on a small client
    clients = _clients(zero_dims=5)
    for method in ("dpcvae", "dpcgan"):
        out = run_generative(
            method=method,
            clients=clients,
            n_classes=3,
            cfg=CFG,
            dp=DPConfig(),
            head_cfg=HEAD,
            seed=0,
        )
        assert all(np.isfinite(r["train_loss"]) for r in out.history)
        assert np.isfinite(out.fidelity["wasserstein_mean"])
        assert all(np.isfinite(p.test).all() for p in out.global_)
    row = standardize_records(np.zeros((2, 6)))
    assert np.array_equal(row, np.zeros((2, 6)))


def test_synthetic_label_counts_as_requested():
    y = np.array([0, 0, 0, 1, 2, 2])
    rng = np.random.default_rng(0)
    match = synthetic_label_counts(y, 4, CFG, rng)
    assert match.tolist() == [3, 1, 2, 0]
    double = GenerativeConfig(generated_factor=2.0)
    assert synthetic_label_counts(y, 4, double, rng).tolist() == [6, 2, 4, 0]
    uniform = GenerativeConfig(synthetic_labels="uniform", generated_factor=1.5)
    counts = synthetic_label_counts(y, 4, uniform, rng)
    assert counts.sum() == 9 and counts.max() - counts.min() <= 1
    balanced = GenerativeConfig(synthetic_labels="balanced", generated_factor=1.5)
    counts = synthetic_label_counts(y, 4, balanced, rng)
    # 9 samples over the three classes the client holds, none for the class it lacks
    assert counts.tolist() == [3, 3, 3, 0]
    counts = synthetic_label_counts(np.array([0, 0, 0, 0, 2]), 4, balanced, rng)
    assert counts.sum() == 7 and counts[[1, 3]].tolist() == [0, 0] and set(counts[[0, 2]]) == {3, 4}


def test_chance_is_flagged_within_three_standard_errors():
    assert at_chance(0.1, 0.1, 1000) and at_chance(0.12, 0.1, 1000)
    assert not at_chance(0.2, 0.1, 1000)
    assert at_chance(0.2, 0.1, 50)  # 50 records cannot tell 0.2 from 0.1
    report = global_synthetic_report([30, 20], [200, 300], 10)
    assert report["acc"] == 0.1 and report["chance"] == 0.1 and report["at_chance"]
    assert not global_synthetic_report([150, 250], [200, 300], 10)["at_chance"]
    client = {"wasserstein": 1.0, "precision": 0, "recall": 0, "density": 0, "coverage": 0}
    good = {**client, "synthetic_acc": 0.9, "majority": 0.5, "n_test": 400.0}
    bad = {**client, "synthetic_acc": 0.5, "majority": 0.5, "n_test": 400.0}
    glob = global_synthetic_report([400], [400], 10)
    # per client: the mean synthetic-only accuracy against the mean majority-class rate
    assert not fidelity_report(CFG, [good, bad], glob)["synthetic_client_at_majority"]
    report = fidelity_report(CFG, [bad, bad], glob)
    assert report["synthetic_client_at_majority"] and not report["synthetic_at_chance"]
    # chance is 1/C: only the global model's synthetic data is tested against it
    report = fidelity_report(CFG, [good], global_synthetic_report([41], [400], 10))
    assert report["synthetic_at_chance"] and not report["synthetic_client_at_majority"]
    assert report["client_majority"] == [0.5] and "chance" not in report


def test_the_chance_warning_names_what_is_at_chance():
    client = {"wasserstein": 1.0, "precision": 0, "recall": 0, "density": 0, "coverage": 0}
    bad = {**client, "synthetic_acc": 0.5, "majority": 0.5, "n_test": 400.0}
    good = {**client, "synthetic_acc": 0.9, "majority": 0.5, "n_test": 400.0}
    informative = global_synthetic_report([214], [400], 10)  # 53.5% against 10%
    useless = global_synthetic_report([41], [400], 10)
    # per-client at the majority rate, global far above 1/C: the shared model carries information
    warning = chance_warning(True, fidelity_report(CFG, [bad, bad], informative))
    assert "each client's head" in warning and "carries information" in warning
    assert "majority-class rate 0.500" in warning and "chance 1/C = 0.100" in warning
    assert "carries no information" not in warning and "0.535" in warning
    # both at chance: nothing of use is shared
    warning = chance_warning(True, fidelity_report(CFG, [bad, bad], useless))
    assert "carries no information" in warning
    # only the global model at chance
    warning = chance_warning(True, fidelity_report(CFG, [good, good], useless))
    assert warning.startswith("the global model's synthetic data is at chance")
    # nothing at chance, or a run that shares without DP: no warning
    assert chance_warning(True, fidelity_report(CFG, [good], informative)) is None
    assert chance_warning(False, fidelity_report(CFG, [bad], useless)) is None


def test_the_global_synthetic_accuracy_is_the_pooled_accuracy_of_one_head():
    out = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(enabled=False),
        head_cfg=HEAD,
        seed=0,
    )
    glob = out.fidelity["global_synthetic"]
    assert glob["n_test"] == 3 * 5 and glob["chance"] == pytest.approx(1 / 3)
    assert glob["acc"] * glob["n_test"] == pytest.approx(round(glob["acc"] * glob["n_test"]))
    per_client = out.fidelity["synthetic_acc"]
    expected = [
        float((p.test.argmax(1) == c.y_test).mean()) for p, c in zip(out.global_, _clients())
    ]
    assert per_client == pytest.approx(expected)


def test_disabled_dp_reports_no_guarantee():
    out = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(enabled=False),
        head_cfg=HEAD,
        seed=0,
    )
    assert out.privacy["enabled"] is False
    assert all(c["epsilon"] is None for c in out.privacy["clients"])
    assert all("epsilon_max" not in r for r in out.history)


def test_same_seed_same_result():
    a = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(),
        head_cfg=HEAD,
        seed=5,
    )
    b = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(),
        head_cfg=HEAD,
        seed=5,
    )
    c = run_generative(
        method="dpcvae",
        clients=_clients(),
        n_classes=3,
        cfg=CFG,
        dp=DPConfig(),
        head_cfg=HEAD,
        seed=6,
    )
    assert a.history == b.history and a.fidelity == b.fidelity
    assert a.fidelity != c.fidelity


def test_a_client_with_an_empty_synthetic_set_is_listed_and_left_out_of_the_means():
    client = {"wasserstein": 1.0, "precision": 0, "recall": 0, "density": 0, "coverage": 0}
    good = {**client, "synthetic_acc": 0.9, "majority": 0.5, "n_test": 400.0}
    nan = float("nan")
    empty = {"wasserstein": nan, "precision": nan, "recall": nan, "density": nan,
             "coverage": nan, "synthetic_acc": nan, "majority": 1.0, "n_test": 4.0,
             "synthetic_empty": 1.0}  # fmt: skip
    report = fidelity_report(CFG, [good, empty], global_synthetic_report([300], [404], 2))
    assert report["synthetic_empty"] == [1] and report["wasserstein"] == [1.0, None]
    assert report["synthetic_acc"] == [0.9, None] and report["synthetic_acc_mean"] == 0.9
    assert report["synthetic_acc_client_majority"] == 0.5  # the empty client's 1.0 left out
    assert empty_synthetic_warning(report).startswith(
        "empty synthetic data: client(s) 1 drew no synthetic record"
    )
    nothing = global_synthetic_report([None, None], [200, 204], 2)
    assert nothing["empty"] and nothing["acc"] is None and not nothing["at_chance"]
    assert "samples no class" in empty_synthetic_warning(fidelity_report(CFG, [empty], nothing))
    full = global_synthetic_report([300], [400], 2)
    assert (
        "empty" not in full and empty_synthetic_warning(fidelity_report(CFG, [good], full)) is None
    )
