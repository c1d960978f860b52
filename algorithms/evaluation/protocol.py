"""The evaluation protocol: per-client test metrics, and the lambda protocol shared by
FedLambda and the DP generative methods.

Each client has a local head and a global model; their softmax outputs are mixed as
`lam * p_local + (1 - lam) * p_global`. One `lam` from the grid {0, r, 2r, ..., 1} is chosen by
the mean validation score across clients (ties go to the smallest lam) and applied on test. The
score is `--lambda_metric`: accuracy (the paper's) or balanced accuracy. Under label skew the
local head wins on accuracy (it has learnt the client's own prior) while the gain of sharing is
on the client's rare classes, which balanced accuracy weighs as much as the frequent ones. Every
run reports the protocol under both metrics (`lambda_protocol` in metrics.json); the tables use
the chosen one.

Split as a deployment runs it: each client reports its validation scores over the grid
(`client_val_scores`), the server chooses lambda (`choose_lambda`), each client computes its
test rows at the chosen lambdas (`client_test_row`). downstream.py extends this to
every downstream mode and runs the three in one process (`evaluate_clients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.clients import ClientData
from data.split_config import SplitConfig
from utils.cli import flag_name
from utils.metrics import classification_metrics

# The refusal when no client has validation data (lambda and the downstream modes need it).
NO_VALIDATION = (
    f"no client has validation data to choose lambda; use {flag_name(SplitConfig, 'val_frac')} > 0"
)

# --lambda_metric values, with the key of the test metric each one is (classification_metrics).
LAMBDA_METRICS = {"accuracy": "acc", "balanced_accuracy": "balanced_acc"}


@dataclass(frozen=True)
class ClientProbs:
    """A model's class probabilities on one client's validation and test sets, and on the
    pooled test data of every client (a simulation only); `prior`: the label distribution of
    the data the model was trained on, where the client knows it (downstream.py)."""

    val: np.ndarray
    test: np.ndarray
    pooled: np.ndarray | None = None
    prior: np.ndarray | None = None


def lambda_grid(resolution: float) -> np.ndarray:
    """The grid {0, resolution, ..., 1} (both ends included)."""
    if not 0 < resolution <= 1:
        raise ValueError(f"the lambda grid's resolution must lie in (0, 1], got {resolution}")
    n = int(round(1.0 / resolution))
    if not np.isclose(n * resolution, 1.0):
        raise ValueError(f"the lambda grid's resolution must divide 1 evenly, got {resolution}")
    return np.linspace(0.0, 1.0, n + 1)


def check_lambda_metric(metric: str) -> None:
    if metric not in LAMBDA_METRICS:
        raise ValueError(f"lambda metric must be one of {tuple(LAMBDA_METRICS)}, got {metric!r}")


def mix(p_local: np.ndarray, p_global: np.ndarray, lam: float) -> np.ndarray:
    """lam * p_local + (1 - lam) * p_global."""
    return lam * p_local + (1.0 - lam) * p_global


def client_val_scores(
    local: ClientProbs, global_: ClientProbs, y_val: np.ndarray, grid: np.ndarray
) -> dict[str, list[float]] | None:
    """One client's validation score of the mixed model for every grid value, under every
    lambda metric (None without validation data). This, not the probabilities, is what a
    client reports to choose lambda."""
    if not len(y_val):
        return None
    scores: dict[str, list[float]] = {m: [] for m in LAMBDA_METRICS}
    for lam in grid:
        values = classification_metrics(y_val, mix(local.val, global_.val, lam).argmax(1))
        for metric, key in LAMBDA_METRICS.items():
            scores[metric].append(values[key])
    return scores


def choose_lambda(
    per_client: list[dict[str, list[float]] | None], grid: np.ndarray, metric: str = "accuracy"
) -> tuple[float, list[float]]:
    """The grid value with the best mean validation `metric` across the clients that have
    validation data (ties: the smallest), and that mean score for every grid value."""
    check_lambda_metric(metric)
    reported = [scores[metric] for scores in per_client if scores is not None]
    if not reported:
        raise ValueError(NO_VALIDATION)
    mean = [float(np.mean([s[j] for s in reported])) for j in range(len(grid))]
    return float(grid[int(np.argmax(mean))]), mean


def client_row(c: ClientData, test_probs: np.ndarray) -> dict:
    """One client's line of metrics.json: its sizes and its test metrics for these predictions."""
    metrics = classification_metrics(c.y_test, test_probs.argmax(1))
    return {
        "id": c.id,
        "n_train": len(c.y_train),
        "n_val": len(c.y_val),
        "n_test": len(c.y_test),
        **{f"test_{k}": v for k, v in metrics.items()},
    }


def client_test_row(
    c: ClientData, local_test: np.ndarray | None, global_test: np.ndarray | None, lam: float | None
) -> dict:
    """One client's test row: of the mixed model at `lam`, or of its one model (lam None)."""
    if lam is not None and local_test is not None and global_test is not None:
        return client_row(c, mix(local_test, global_test, lam))
    probs = local_test if local_test is not None else global_test
    if probs is None:
        raise ValueError(f"client {c.id}: no test predictions to evaluate")
    return client_row(c, probs)


@dataclass(frozen=True)
class Evaluation:
    """A run's test rows (of its downstream mode at the chosen value, or of its one model), the
    lambda chosen under `metric`, the mean validation accuracy per grid value, the mix mode's
    protocol under every metric: {metric: {lambda, val_scores, clients, summary}}, and every
    downstream mode's (`modes`, downstream.py; None without two models)."""

    rows: list[dict]
    lam: float | None = None
    val_acc: list[float] | None = None
    metric: str = "accuracy"
    protocol: dict | None = None
    modes: dict | None = None
    downstream: str | None = None
    withheld: str | None = None  # why there are no rows: the sites' policies kept them (Flower)


def lambda_protocol(
    per_client: list[dict[str, list[float]] | None], grid: np.ndarray
) -> dict[str, tuple[float, list[float]]]:
    """The lambda and the mean validation scores under every lambda metric."""
    return {m: choose_lambda(per_client, grid, m) for m in LAMBDA_METRICS}


@dataclass
class Outcome:
    """What a method hands to evaluation: per-client probabilities of its local and/or global
    model, the per-round history, and what it shares (numbers of parameters per round)."""

    local: list[ClientProbs] | None
    global_: list[ClientProbs] | None
    history: list[dict]
    params_shared: int
    privacy: dict | None = None
    fidelity: dict | None = None
    params_model: int | None = None
    # per client: synthetic embeddings (model space) and their labels, for plots
    synthetic: list[tuple[np.ndarray, np.ndarray]] | None = None
    # per client: its joint heads by weight (downstream.py), when it has them
    joint: list[dict[float, ClientProbs]] | None = None
