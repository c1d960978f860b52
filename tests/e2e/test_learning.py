"""The methods learn on real data: scikit-learn's 1,797 handwritten digits, their 64 raw pixels
as embeddings (per-record standardized, like every database's). A CVAE and a CGAN trained
without DP synthesize data whose head (trained on synthetic data only, tested on real test data)
is far above chance; FedAvg on an iid split reaches the centralized head."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from algorithms.evaluation.downstream import evaluate_clients
from algorithms.evaluation.heads import HeadConfig
from algorithms.methods.baselines import run_centralized, run_fedavg
from algorithms.methods.fedavg import FedAvgConfig
from algorithms.methods.generative import train_generative
from algorithms.methods.synthesis import finish_client
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from data.features import standardize_records

CHANCE = 0.1  # 10 balanced classes
HEAD = HeadConfig(epochs=100, lr=1e-2)


def digits_clients(n_clients: int) -> list[ClientData]:
    """An iid split of the digits: per client 60% train, 10% validation, 30% test."""
    x, y = load_digits(return_X_y=True)
    u = standardize_records(x.astype(np.float64))
    order = np.random.default_rng(0).permutation(len(y))
    clients = []
    for cid, idx in enumerate(np.array_split(order, n_clients)):
        a, b = int(0.6 * len(idx)), int(0.7 * len(idx))
        tr, va, te = idx[:a], idx[a:b], idx[b:]
        clients.append(ClientData(cid, u[tr], y[tr], u[va], y[va], u[te], y[te]))
    return clients


SHORT = {"n_rounds": 5, "local_epochs": 2, "latent_dim": 8}


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("dpcvae", GenerativeConfig(**SHORT, batch_size=64, hidden_dim=64)),
        ("dpcgan", GenerativeConfig(**SHORT, batch_size=32, gan_lr=2e-3)),
    ],
    ids=["dpcvae", "dpcgan"],
)
def test_without_dp_the_synthetic_data_trains_a_head_far_above_chance(method, cfg):
    clients = digits_clients(2)
    gen_clients, weights, _ = train_generative(
        method=method, clients=clients, n_classes=10, cfg=cfg, dp=DPConfig(enabled=False), seed=0
    )
    for client, data in zip(gen_clients, clients):
        done = finish_client(
            client=client, data=data, weights=weights, n_classes=10, cfg=cfg, head_cfg=HEAD, seed=0
        )
        synthetic_only = (done.global_.test.argmax(1) == data.y_test).mean()
        local = (done.local.test.argmax(1) == data.y_test).mean()
        assert synthetic_only > 4 * CHANCE, (method, synthetic_only)
        assert local > 0.9  # the real data is easy: the head itself is not the bottleneck


def test_fedavg_on_an_iid_split_reaches_the_centralized_head():
    clients = digits_clients(3)
    cfg = FedAvgConfig(n_rounds=20, local_steps=2, lr=0.2, lr_scheduler="none")
    fedavg = run_fedavg(clients=clients, n_classes=10, cfg=cfg, seed=0)
    centralized = run_centralized(clients, 10, HeadConfig(epochs=200, lr=1e-2), seed=0)
    accs = {}
    for name, out in (("fedavg", fedavg), ("centralized", centralized)):
        rows = evaluate_clients(
            clients=clients, local=out.local, global_=out.global_, grid_resolution=0.1
        ).rows
        accs[name] = np.mean([r["test_acc"] for r in rows])
    assert accs["centralized"] > 0.9
    assert abs(accs["fedavg"] - accs["centralized"]) < 0.05, accs
    val = [row["val_acc"] for row in fedavg.history]
    assert val[-1] > val[0] + 0.1  # the global head learned over the rounds
