"""The federation loop, FedAvg and FedProx against hand computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms.federation.rounds import Rounds, fedavg_aggregate, run_federation, sample_clients
from algorithms.methods.fedavg import FedAvgClient, FedAvgConfig, lr_at, seeded_global_head
from data.clients import ClientData


def _client(cid, n, dim=5, n_classes=3, seed=0):
    rng = np.random.default_rng(seed + cid)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, n_classes, size=n)
    empty = np.zeros((0, dim), np.float32)
    return ClientData(cid, x, y, empty, y[:0], empty, y[:0])


def test_one_full_batch_step_per_round_equals_a_centralized_step():
    """FedAvg weighted by client size with one full-batch SGD step equals one step on the
    pooled data (the mean loss over the pool is the size-weighted mean of client losses)."""
    clients = [_client(0, 7), _client(1, 19), _client(2, 30)]
    cfg = FedAvgConfig(n_rounds=1, local_steps=1, batch_size=1000, lr=0.5, lr_scheduler="none")
    start = seeded_global_head(5, 3, seed=1)
    fed = [FedAvgClient(c, 3, cfg, seed=c.id) for c in clients]
    weights, history = run_federation(fed, start, Rounds(1))

    head = torch.nn.Linear(5, 3)
    head.load_state_dict(start)
    x = torch.as_tensor(np.concatenate([c.x_train for c in clients]))
    y = torch.as_tensor(np.concatenate([c.y_train for c in clients]))
    F.cross_entropy(head(x), y).backward()
    with torch.no_grad():
        for name, p in head.named_parameters():
            torch.testing.assert_close(weights[name], p - 0.5 * p.grad, atol=1e-6, rtol=1e-5)
    assert len(history) == 1 and history[0]["clients"] == 3


def test_fedprox_step_matches_the_proximal_gradient_with_its_half_factor():
    c = _client(0, 12)
    mu, lr = 3.0, 0.2
    cfg = FedAvgConfig(n_rounds=1, local_steps=2, batch_size=100, lr=lr, mu=mu, lr_scheduler="none")
    start = seeded_global_head(5, 3, seed=4)
    update = FedAvgClient(c, 3, cfg, seed=0).fit(start, 0)

    head = torch.nn.Linear(5, 3)
    head.load_state_dict(start)
    x, y = torch.as_tensor(c.x_train), torch.as_tensor(c.y_train)
    anchor = {k: v.clone() for k, v in start.items()}
    for _ in range(2):
        head.zero_grad()
        F.cross_entropy(head(x), y).backward()
        with torch.no_grad():
            for name, p in head.named_parameters():
                # d/dw of mu/2 * ||w - w_g||^2 is mu * (w - w_g)
                p -= lr * (p.grad + mu * (p - anchor[name]))
    for name, p in head.named_parameters():
        torch.testing.assert_close(update.weights[name], p.detach(), atol=1e-6, rtol=1e-5)


def test_multi_step_schedule_drops_at_half_and_three_quarters():
    cfg = FedAvgConfig(n_rounds=8, lr=1.0)
    assert [lr_at(cfg, r) for r in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(FedAvgConfig(lr=0.3, lr_scheduler="none"), 40) == 0.3


def test_client_sampling():
    rng = np.random.default_rng(0)
    assert sample_clients(5, 1.0, rng) == [0, 1, 2, 3, 4]
    chosen = sample_clients(10, 0.3, rng)
    assert len(chosen) == 3 and len(set(chosen)) == 3 and all(0 <= i < 10 for i in chosen)
    assert len(sample_clients(10, 0.01, rng)) == 1


def test_partial_participation_averages_only_the_chosen_clients():
    clients = [_client(i, 10 + i) for i in range(4)]
    cfg = FedAvgConfig(n_rounds=3, sampling_rate=0.5, lr_scheduler="none")
    fed = [FedAvgClient(c, 3, cfg, seed=c.id) for c in clients]
    _, history = run_federation(
        fed, seeded_global_head(5, 3, 0), Rounds(3, sampling_rate=0.5, seed=7)
    )
    assert [h["clients"] for h in history] == [2, 2, 2]


def test_fedavg_aggregate_weights_by_sample_count():
    from algorithms.federation.rounds import ClientUpdate

    ups = [ClientUpdate({"w": torch.tensor([0.0])}, 1), ClientUpdate({"w": torch.tensor([4.0])}, 3)]
    torch.testing.assert_close(fedavg_aggregate(ups)["w"], torch.tensor([3.0]))
