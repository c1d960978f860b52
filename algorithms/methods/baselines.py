"""The baselines: local heads only, a centralized head (upper bound), FedAvg/FedProx, FedLambda."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from algorithms.evaluation.downstream import ANCHOR_STRENGTHS, head_probs, label_prior
from algorithms.evaluation.heads import HeadConfig, new_head, train_head
from algorithms.evaluation.protocol import ClientProbs, Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, fedavg_aggregate, run_federation
from algorithms.methods.fedavg import (
    FedAvgConfig,
    initial_head,
    make_fedavg_clients,
    val_accuracy,
    validation_row,
)
from data.clients import ClientData, pooled_test
from utils.checkpoint import RoundCheckpoint
from utils.seeding import CENTRALIZED_HEAD, LOCAL_HEAD, SAMPLING, derive_seed


def local_heads(
    clients: list[ClientData], n_classes: int, cfg: HeadConfig, seed: int, device: str = "cpu"
) -> list[ClientProbs]:
    """Each client trains a head on its own training data only."""
    pooled_x, _ = pooled_test(clients)
    out = []
    for c in clients:
        head_seed = derive_seed(seed, LOCAL_HEAD, c.id)
        head = train_head(
            x=c.x_train, y=c.y_train, n_classes=n_classes, cfg=cfg, seed=head_seed, device=device
        )
        out.append(head_probs(head, c, pooled_x, label_prior(c.y_train, n_classes)))
    return out


def anchored_heads(
    *,
    c: ClientData,
    n_classes: int,
    cfg: HeadConfig,
    weights: dict[str, torch.Tensor],
    pooled_x: np.ndarray | None,
    device: str = "cpu",
) -> dict[float, ClientProbs]:
    """FedLambda's joint heads for one client: each starts from the FedAvg head `weights` and
    trains on the client's real data, pulled toward `weights` with each of ANCHOR_STRENGTHS.

    Args:
        c: the client.
        n_classes: the number of classes.
        cfg: the heads' settings.
        weights: the FedAvg global head.
        pooled_x: every client's test data, for the pooled rows (None: none).
        device: where the heads train.
    """
    out = {}
    for strength in ANCHOR_STRENGTHS:
        head = train_head(
            x=c.x_train,
            y=c.y_train,
            n_classes=n_classes,
            cfg=cfg,
            seed=0,
            device=device,
            anchor=weights,
            anchor_strength=strength,
        )
        out[strength] = head_probs(head, c, pooled_x, label_prior(c.y_train, n_classes))
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
    head = train_head(
        x=x,
        y=y,
        n_classes=n_classes,
        cfg=head_cfg,
        seed=derive_seed(seed, CENTRALIZED_HEAD),
        device=device,
    )
    pooled_x, _ = pooled_test(clients)
    return Outcome(None, [head_probs(head, c, pooled_x) for c in clients], [], params_shared=0)


def run_fedavg(
    *,
    clients: list[ClientData],
    n_classes: int,
    cfg: FedAvgConfig,
    seed: int,
    head_cfg: HeadConfig | None = None,
    checkpoint: RoundCheckpoint | None = None,
    device: str = "cpu",
    fed_clients: list[Any] | None = None,
    aggregate: Callable[[Sequence[ClientUpdate]], StateDict] = fedavg_aggregate,
) -> Outcome:
    """FedAvg (FedProx when cfg.mu > 0) on a linear head. With `head_cfg` it is FedLambda: each
    client also trains a local head, mixed with the global one by the lambda protocol. With
    `checkpoint`, training continues from its last round and rewrites it after every round.

    Args:
        clients: every client's data.
        n_classes: the number of classes.
        cfg: rounds, local steps, learning rate, FedProx's mu.
        seed: the run seed.
        head_cfg: the local heads' settings (FedLambda; None: FedAvg or FedProx).
        checkpoint: where rounds are saved and resumed from (None: no checkpoint).
        device: where the heads train.
        fed_clients: the federated clients, one per data set (None: FedAvg's; DP-FedAvg
            passes its own).
        aggregate: the server's step (FedAvg's average; DP-FedAvg under secure aggregation:
            the decoding of the sites' sum).
    """
    dim = clients[0].x_train.shape[1]
    if fed_clients is None:
        fed_clients = make_fedavg_clients(clients, n_classes, cfg, seed, device)
    evaluator = new_head(dim, n_classes, 0).to(device)

    def validate(rnd, weights, updates):
        evaluator.load_state_dict(weights)
        return validation_row(cfg, rnd, [val_accuracy(evaluator, c) for c in clients])

    weights = initial_head(dim, n_classes, seed)
    history: list[dict] = []
    start = 0
    if checkpoint is not None:
        weights, history, start = checkpoint.restore(fed_clients, weights)
    rounds = Rounds(
        cfg.n_rounds,
        aggregate=aggregate,
        sampling_rate=cfg.sampling_rate,
        seed=derive_seed(seed, SAMPLING),
        start_round=start,
        on_round=validate,
        after_round=checkpoint.saver(fed_clients) if checkpoint is not None else None,
        desc="fedprox" if cfg.mu > 0 else "fedavg",
    )
    weights, history = run_federation(fed_clients, weights, rounds, history)
    evaluator.load_state_dict(weights)
    pooled_x, _ = pooled_test(clients)
    global_probs = [head_probs(evaluator, c, pooled_x) for c in clients]
    params = sum(v.numel() for v in weights.values())
    if head_cfg is None:
        return Outcome(None, global_probs, history, params_shared=params)
    local = local_heads(clients, n_classes, head_cfg, seed, device)
    joint = [
        anchored_heads(
            c=c,
            n_classes=n_classes,
            cfg=head_cfg,
            weights=weights,
            pooled_x=pooled_x,
            device=device,
        )
        for c in clients
    ]
    return Outcome(local, global_probs, history, params_shared=params, joint=joint)
