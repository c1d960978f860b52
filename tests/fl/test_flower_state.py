"""The Flower client state: packed into records and back, and a client rebuilt from its
stored state each round that trains as one kept for the whole run."""

import pytest
import torch
from flwr.app import RecordDict

from algorithms.methods.fedavg import FedAvgConfig, make_fedavg_clients, seeded_global_head
from algorithms.methods.generative import make_clients, seeded_global_weights
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import client_datasets
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl.records import load_state, pack_state, save_state, unpack_state


def one_client(gauss_db):
    db = load_database(gauss_db)
    return client_datasets(db, split_database(db, SplitConfig(n_clients=2, seed=1)))[0], 4


def test_pack_state_keeps_types_shapes_and_int_keys():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
        "param_groups": [{"betas": (0.9, 0.999), "params": [0], "foreach": None, "x": True}],
        "rng": torch.zeros(5, dtype=torch.uint8),
        "history": [[1.5, 0.25, 10]],
    }
    arrays, skeleton = pack_state(state)
    back = unpack_state(arrays, skeleton)
    assert list(back["state"]) == [0]
    assert back["state"][0]["step"].shape == () and back["state"][0]["step"].item() == 3.0
    assert torch.equal(back["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["rng"].dtype == torch.uint8
    assert back["param_groups"] == [
        {"betas": (0.9, 0.999), "params": [0], "foreach": None, "x": True}
    ]
    assert back["history"] == [[1.5, 0.25, 10]]
    with pytest.raises(TypeError):
        pack_state({"bad": object()})


@pytest.mark.parametrize("method", ["dpcvae", "fedavg"])
def test_a_client_restored_from_its_stored_state_continues_exactly(gauss_db, method):
    """What the ClientApp does every round (rebuild from the seed, load Context.state) gives
    the same training as one client object kept for the whole run (main.py)."""
    data, n_classes = one_client(gauss_db)
    if method == "dpcvae":
        cfg, dp = GenerativeConfig(n_rounds=3, local_epochs=1), DPConfig()

        def make():
            return make_clients(
                method="dpcvae", clients=[data], n_classes=n_classes, cfg=cfg, dp=dp, seed=7
            )[0]

        weights = seeded_global_weights("dpcvae", 16, n_classes, cfg, 1)
    else:
        cfg = FedAvgConfig(n_rounds=3, local_steps=2)

        def make():
            return make_fedavg_clients([data], n_classes, cfg, 7)[0]

        weights = seeded_global_head(16, n_classes, 1)
    kept = make()
    kept_updates = [kept.fit(weights, rnd) for rnd in range(3)]

    store = RecordDict()
    restored_updates = []
    for rnd in range(3):
        client = make()
        state = load_state(store, "client")
        if state is not None:
            client.load_state_dict(state)
        restored_updates.append(client.fit(weights, rnd))
        save_state(store, "client", client.state_dict())
    for a, b in zip(kept_updates, restored_updates):
        assert a.metrics == b.metrics
        for key in a.weights:
            assert torch.equal(a.weights[key], b.weights[key])
    if method == "dpcvae":
        assert kept.privacy() == client.privacy()
