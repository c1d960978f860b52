"""The baselines: local heads only, a centralized head (upper bound), FedAvg/FedProx, FedLambda."""

from __future__ import annotations

import numpy as np
import torch

from algorithms.evaluation.heads import HeadConfig, new_head, predict_proba, train_head
from algorithms.evaluation.protocol import ClientProbs, Outcome
from algorithms.federation.rounds import run_federation
from algorithms.methods.fedavg import (
    FedAvgConfig,
    initial_head,
    make_fedavg_clients,
    val_accuracy,
    validation_row,
)
from data.clients import ClientData
from utils.checkpoint import RoundCheckpoint
from utils.seeding import CENTRALIZED_HEAD, LOCAL_HEAD, SAMPLING, derive_seed


def _probs(head: torch.nn.Module, c: ClientData) -> ClientProbs:
    return ClientProbs(predict_proba(head, c.x_val), predict_proba(head, c.x_test))


def local_heads(
    clients: list[ClientData], n_classes: int, cfg: HeadConfig, seed: int, device: str = "cpu"
) -> list[ClientProbs]:
    """Each client trains a head on its own training data only."""
    out = []
    for c in clients:
        head_seed = derive_seed(seed, LOCAL_HEAD, c.id)
        head = train_head(c.x_train, c.y_train, n_classes, cfg, head_seed, device)
        out.append(_probs(head, c))
    return out


def run_local(
    clients: list[ClientData], n_classes: int, head_cfg: HeadConfig, seed: int, device: str = "cpu"
) -> Outcome:
    """Local training only: nothing is shared."""
    probs = local_heads(clients, n_classes, head_cfg, seed, device)
    return Outcome(probs, None, [], params_shared=0)


def run_centralized(
    clients: list[ClientData], n_classes: int, head_cfg: HeadConfig, seed: int, device: str = "cpu"
) -> Outcome:
    """One head on the pooled training data of every client (not private: an upper bound)."""
    x = np.concatenate([c.x_train for c in clients])
    y = np.concatenate([c.y_train for c in clients])
    head = train_head(x, y, n_classes, head_cfg, derive_seed(seed, CENTRALIZED_HEAD), device)
    return Outcome(None, [_probs(head, c) for c in clients], [], params_shared=0)


def run_fedavg(
    clients: list[ClientData],
    n_classes: int,
    cfg: FedAvgConfig,
    seed: int,
    head_cfg: HeadConfig | None = None,
    checkpoint: RoundCheckpoint | None = None,
    device: str = "cpu",
) -> Outcome:
    """FedAvg (FedProx when cfg.mu > 0) on a linear head. With `head_cfg` it is FedLambda: each
    client also trains a local head, mixed with the global one by the lambda protocol. With
    `checkpoint`, training continues from its last round and rewrites it after every round."""
    dim = clients[0].x_train.shape[1]
    fed_clients = make_fedavg_clients(clients, n_classes, cfg, seed, device)
    evaluator = new_head(dim, n_classes, 0).to(device)

    def validate(rnd, weights, updates):
        evaluator.load_state_dict(weights)
        return validation_row(cfg, rnd, [val_accuracy(evaluator, c) for c in clients])

    weights = initial_head(dim, n_classes, seed)
    history, start = [], 0
    if checkpoint is not None:
        weights, history, start = checkpoint.restore(fed_clients, weights)
    weights, history = run_federation(
        fed_clients,
        weights,
        cfg.n_rounds,
        sampling_rate=cfg.sampling_rate,
        seed=derive_seed(seed, SAMPLING),
        start_round=start,
        history=history,
        on_round=validate,
        desc="fedprox" if cfg.mu > 0 else "fedavg",
        after_round=checkpoint.saver(fed_clients) if checkpoint is not None else None,
    )
    evaluator.load_state_dict(weights)
    global_probs = [_probs(evaluator, c) for c in clients]
    local = None if head_cfg is None else local_heads(clients, n_classes, head_cfg, seed, device)
    params = sum(v.numel() for v in weights.values())
    return Outcome(local, global_probs, history, params_shared=params)
