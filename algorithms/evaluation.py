"""The evaluation protocol: per-client test metrics, and the lambda protocol shared by
FedLambda and the DP generative methods.

Each client has a local head and a global model; their softmax outputs are mixed as
`lam * p_local + (1 - lam) * p_global`. One `lam` from the grid {0, r, 2r, ..., 1} is chosen by
the mean validation accuracy across clients (ties go to the smallest lam) and applied on test.

Split as a deployment runs it: each client reports its validation accuracies over the grid
(`client_val_accuracies`), the server chooses lambda (`choose_lambda`), each client computes its
test row at that lambda (`client_test_row`). `evaluate_clients` is the same three in one
process; the Flower apps call them on each side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.clients import ClientData
from utils.metrics import classification_metrics


@dataclass(frozen=True)
class ClientProbs:
    """A model's class probabilities on one client's validation and test sets."""

    val: np.ndarray
    test: np.ndarray


def lambda_grid(resolution: float) -> np.ndarray:
    """The grid {0, resolution, ..., 1} (both ends included)."""
    if not 0 < resolution <= 1:
        raise ValueError(f"--weights_grid_resolution must lie in (0, 1], got {resolution}")
    n = int(round(1.0 / resolution))
    if not np.isclose(n * resolution, 1.0):
        raise ValueError(f"--weights_grid_resolution must divide 1 evenly, got {resolution}")
    return np.linspace(0.0, 1.0, n + 1)


def mix(p_local: np.ndarray, p_global: np.ndarray, lam: float) -> np.ndarray:
    """lam * p_local + (1 - lam) * p_global."""
    return lam * p_local + (1.0 - lam) * p_global


def client_val_accuracies(
    local: ClientProbs, global_: ClientProbs, y_val: np.ndarray, grid: np.ndarray
) -> list[float] | None:
    """One client's validation accuracy of the mixed model for every grid value (None without
    validation data). This, not the probabilities, is what a client reports to choose lambda."""
    if not len(y_val):
        return None
    return [float((mix(local.val, global_.val, lam).argmax(1) == y_val).mean()) for lam in grid]


def choose_lambda(
    per_client: list[list[float] | None], grid: np.ndarray
) -> tuple[float, list[float]]:
    """The grid value with the best mean validation accuracy across the clients that have
    validation data (ties: the smallest), and that mean accuracy for every grid value."""
    reported = [accs for accs in per_client if accs is not None]
    if not reported:
        raise ValueError("no client has validation data to choose lambda; use --val_frac > 0")
    scores = [float(np.mean([accs[j] for accs in reported])) for j in range(len(grid))]
    return float(grid[int(np.argmax(scores))]), scores


def select_lambda(
    local: list[ClientProbs],
    global_: list[ClientProbs],
    y_val: list[np.ndarray],
    grid: np.ndarray,
) -> tuple[float, list[float]]:
    """`choose_lambda` over the clients' validation accuracies."""
    per_client = [
        client_val_accuracies(lo, gl, y, grid) for lo, gl, y in zip(local, global_, y_val)
    ]
    return choose_lambda(per_client, grid)


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
    if lam is not None:
        probs = mix(local_test, global_test, lam)
    else:
        probs = local_test if local_test is not None else global_test
    return client_row(c, probs)


def evaluate_clients(
    clients: list[ClientData],
    local: list[ClientProbs] | None,
    global_: list[ClientProbs] | None,
    grid_resolution: float,
) -> tuple[list[dict], float | None, list[float] | None]:
    """Per-client test metrics. With both a local and a global model, lambda is chosen on
    validation and applied on test; with one model its predictions are used as they are.

    Returns (client rows, lambda or None, mean validation accuracy per grid value or None)."""
    if local is None and global_ is None:
        raise ValueError("nothing to evaluate: no local and no global predictions")
    lam, scores = None, None
    if local is not None and global_ is not None:
        grid = lambda_grid(grid_resolution)
        lam, scores = select_lambda(local, global_, [c.y_val for c in clients], grid)
    rows = []
    for i, c in enumerate(clients):
        local_test = local[i].test if local is not None else None
        global_test = global_[i].test if global_ is not None else None
        rows.append(client_test_row(c, local_test, global_test, lam))
    return rows, lam, scores


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
