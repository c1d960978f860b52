"""The one orchestration loop for every federated method, kept apart from what clients do.

A method supplies client objects with `fit(global_weights, round) -> ClientUpdate` (one client's
local round) and an `aggregate(updates) -> global_weights` function (the server's step). The same
two pieces can run under Flower, where each client lives in its own process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from algorithms.federation.aggregation import StateDict, average_state_dicts
from utils.progress import progress


@dataclass
class ClientUpdate:
    """What one client sends back after its local round: the shared tensors, its number of
    training samples (the FedAvg weight) and scalar metrics (train loss, spent epsilon, ...)."""

    weights: StateDict
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class FederatedClient(Protocol):
    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate: ...


def fedavg_aggregate(updates: Sequence[ClientUpdate]) -> StateDict:
    """The server's step: the sample-weighted average of the clients' shared tensors."""
    return average_state_dicts([u.weights for u in updates], [u.n_samples for u in updates])


def sample_clients(n_clients: int, rate: float, rng: np.random.Generator) -> list[int]:
    """Indices of the clients taking part in a round: all of them at rate 1, otherwise a
    uniform sample of max(1, round(rate * n)) clients."""
    if rate >= 1.0:
        return list(range(n_clients))
    k = max(1, int(round(rate * n_clients)))
    return sorted(int(i) for i in rng.choice(n_clients, size=k, replace=False))


# Fits the chosen clients of a round from the global weights: (chosen, weights, round) -> updates,
# one per chosen client and in the same order. In-process it calls each client's `fit`; under
# Flower it sends one message per chosen client and waits for the replies.
FitRound = Callable[[Sequence[int], StateDict, int], list[ClientUpdate]]


# What a round's hooks receive: (round, global weights, ...); see `Rounds`.
OnRound = Callable[[int, StateDict, Sequence[ClientUpdate]], dict | None]
AfterRound = Callable[[int, StateDict, list[dict]], None]


@dataclass(frozen=True)
class Rounds:
    """The schedule of a federation: rounds `start_round .. n_rounds-1`; each samples clients
    at `sampling_rate` (a function of (seed, round), so a resumed run samples as an
    uninterrupted one), lets them fit, and combines their updates with `aggregate` (the
    server's step). `on_round(rnd, weights, updates)` may return extra history columns (e.g.
    validation accuracy); `after_round(rnd, weights, history)` runs once the round's row is in
    the history: that is where checkpoints are written. `desc` names the progress bar."""

    n_rounds: int
    aggregate: Callable[[Sequence[ClientUpdate]], StateDict] = fedavg_aggregate
    sampling_rate: float = 1.0
    seed: int = 0
    start_round: int = 0
    on_round: OnRound | None = None
    after_round: AfterRound | None = None
    desc: str = "rounds"


def run_federation(
    clients: Sequence[FederatedClient],
    global_weights: StateDict,
    rounds: Rounds,
    history: list[dict] | None = None,
    workers: int = 1,
) -> tuple[StateDict, list[dict]]:
    """Run `rounds` with in-process clients (see `run_rounds`), continuing `history`.

    `workers` > 1 fits that many clients of a round at once, in threads: torch releases the
    GIL in its kernels, so with one torch thread each they use as many cores. Only for clients
    that share no mutable state (each its own model, optimizer and RNGs): results are then the
    same as one at a time. The clients that took longest in their last round start first, so
    that the round does not wait on one long client at its end."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    seconds: dict[int, float] = {}  # each client's last fit time

    def fit_timed(i: int, weights: StateDict, rnd: int) -> ClientUpdate:
        start = time.perf_counter()
        update = clients[i].fit(weights, rnd)
        seconds[i] = time.perf_counter() - start
        return update

    with ThreadPoolExecutor(workers) as pool:

        def fit_round(chosen: Sequence[int], weights: StateDict, rnd: int) -> list[ClientUpdate]:
            if workers == 1:
                return [clients[i].fit(weights, rnd) for i in chosen]
            longest_first = sorted(chosen, key=lambda i: -seconds.get(i, 0.0))
            futures = {i: pool.submit(fit_timed, i, weights, rnd) for i in longest_first}
            return [futures[i].result() for i in chosen]

        return run_rounds(len(clients), fit_round, global_weights, rounds, history)


def run_rounds(
    n_clients: int,
    fit_round: FitRound,
    global_weights: StateDict,
    rounds: Rounds,
    history: list[dict] | None = None,
) -> tuple[StateDict, list[dict]]:
    """Run `rounds`, continuing `history`. Each round: sample clients, let each fit from the
    current global weights (`fit_round`), aggregate. Returns the final global weights and
    `history` with one row per round."""
    history = list(history or [])
    start, end = rounds.start_round, rounds.n_rounds
    bar = progress(range(start, end), desc=rounds.desc, unit="round", initial=start, total=end)
    for rnd in bar:
        rng = np.random.default_rng([rounds.seed, rnd])
        chosen = sample_clients(n_clients, rounds.sampling_rate, rng)
        updates = fit_round(chosen, global_weights, rnd)
        if len(updates) != len(chosen):
            raise RuntimeError(
                f"round {rnd + 1}: {len(chosen)} clients chosen, {len(updates)} updates"
            )
        global_weights = rounds.aggregate(updates)
        row = {"round": rnd + 1, "clients": len(chosen)}
        row.update(_weighted_metrics(updates))
        for i, u in zip(chosen, updates):
            if "epsilon" in u.metrics:
                row[f"epsilon_client{i}"] = u.metrics["epsilon"]
        if rounds.on_round is not None:
            row.update(rounds.on_round(rnd, global_weights, updates) or {})
        history.append(row)
        if rounds.after_round is not None:
            rounds.after_round(rnd, global_weights, history)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "val_acc")})
    return global_weights, history


def _weighted_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Sample-weighted mean of each scalar metric over the clients of a round (max for epsilon)."""
    out: dict[str, float] = {}
    names = dict.fromkeys(k for u in updates for k in u.metrics)
    for name in names:
        pairs = [(u.metrics[name], u.n_samples) for u in updates if name in u.metrics]
        values = np.array([p[0] for p in pairs], dtype=np.float64)
        if name == "epsilon":
            out["epsilon_max"] = float(values.max())
        else:
            out[name] = float(np.average(values, weights=[p[1] for p in pairs]))
    return out
