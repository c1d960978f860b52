"""The downstream step: how a client uses its own head and what it received (a global head, or
synthetic data), in three modes that every run reports side by side (`--downstream` picks the
headline rows):

- `mix`: the paper's. `lam * p_local + (1 - lam) * p_global`, lam chosen on validation.
- `prior`: the global head's probabilities corrected to the client's own label prior (Bayes'
  rule under label shift: times pi_client / pi_train, renormalized), then the lambda mix.
  pi_client comes from the client's own training counts, which never leave it; pi_train is the
  label distribution the global head was trained on (a synthetic head: its synthetic labels,
  drawn by the client; the FedAvg head: unknown to a client, taken as uniform).
- `joint`: one head trained on the client's real data plus the synthetic data, a synthetic
  record weighted `w` against a real one, w chosen on validation from JOINT_WEIGHTS (w = 0 is
  the local head). FedLambda has no synthetic data: its joint head starts from the FedAvg head
  and is pulled toward it with strength w (ANCHOR_STRENGTHS) while it trains on real data.

The value of each mode (lambda or w) is chosen like the paper's lambda: by the mean validation
score across clients (`--lambda_metric`, every metric reported; ties go to the smallest). Split
as a deployment runs it: each client reports its validation scores (`client_mode_scores`), the
server chooses (`choose_modes`), each client computes its test rows (`client_mode_rows`).

Each row also holds the client's model on the pooled test data of every client (`pooled_*`):
how it does on patients unlike its own. Only a simulation holds that data; a Flower site does
not, and its rows have no pooled keys.
"""

from __future__ import annotations

import numpy as np
import torch

from algorithms.evaluation.heads import predict_proba
from algorithms.evaluation.protocol import (
    LAMBDA_METRICS,
    NO_VALIDATION,
    ClientProbs,
    Evaluation,
    check_lambda_metric,
    choose_lambda,
    client_row,
    lambda_grid,
    mix,
)
from data.clients import ClientData
from utils.metrics import classification_metrics, summarize_clients

# --downstream values, in table order.
MODES = ("mix", "prior", "joint")
# joint: the weight of a synthetic record against a real one (0: the local head alone).
JOINT_WEIGHTS = (0.0, 0.1, 0.3, 1.0)
# joint under FedLambda: the strength of the pull toward the FedAvg head it starts from.
ANCHOR_STRENGTHS = (0.0, 0.01, 0.1, 1.0)
# the prefix of a row's metrics on the pooled test data (test metrics: "test_")
POOLED = "pooled_"


def check_downstream(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"downstream mode must be one of {MODES}, got {mode!r}")


def label_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """The label distribution of `y`, Laplace-smoothed (no class has probability 0)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + n_classes)


def correct_prior(p: np.ndarray, target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Class probabilities of a model trained under label prior `source`, moved to `target`:
    p * target / source, renormalized per row."""
    q = p * (target / source)[None, :]
    return q / q.sum(axis=1, keepdims=True)


def with_prior(probs: ClientProbs, target: np.ndarray) -> ClientProbs:
    """`probs` (whose `prior` is the label distribution its head trained on; None: uniform)
    corrected to `target` on every evaluation set."""
    n = len(target)
    source = probs.prior if probs.prior is not None else np.full(n, 1.0 / n)
    pooled = None if probs.pooled is None else correct_prior(probs.pooled, target, source)
    return ClientProbs(
        correct_prior(probs.val, target, source),
        correct_prior(probs.test, target, source),
        pooled,
        target,
    )


def head_probs(
    head: torch.nn.Module,
    c: ClientData,
    pooled_x: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> ClientProbs:
    """A head's probabilities on the client's validation and test data and on the pooled test
    data (None: none), with the label prior it was trained under (None: unknown to the client)."""
    pooled = None if pooled_x is None else predict_proba(head, pooled_x)
    return ClientProbs(predict_proba(head, c.x_val), predict_proba(head, c.x_test), pooled, prior)


def mixed(local: ClientProbs, global_: ClientProbs, lam: float) -> ClientProbs:
    """The mixed model's probabilities on every evaluation set."""
    pooled = None
    if local.pooled is not None and global_.pooled is not None:
        pooled = mix(local.pooled, global_.pooled, lam)
    return ClientProbs(mix(local.val, global_.val, lam), mix(local.test, global_.test, lam), pooled)


def mode_values(mode: str, grid: np.ndarray, joint_values: tuple[float, ...]) -> np.ndarray:
    """The values a mode chooses from: lambda for mix and prior, w for joint."""
    return np.asarray(joint_values, dtype=np.float64) if mode == "joint" else grid


def candidates(
    mode: str,
    local: ClientProbs,
    global_: ClientProbs,
    joint: dict[float, ClientProbs] | None,
    grid: np.ndarray,
) -> list[ClientProbs]:
    """One client's model under `mode` for every value of the mode's grid."""
    if mode == "mix":
        return [mixed(local, global_, lam) for lam in grid]
    if mode == "prior":
        if local.prior is None:
            raise ValueError("the prior mode needs the local head's label prior")
        corrected = with_prior(global_, local.prior)
        return [mixed(local, corrected, lam) for lam in grid]
    if joint is None:
        raise ValueError("the joint mode needs the client's joint heads")
    return [joint[w] for w in sorted(joint)]


def client_mode_scores(
    local: ClientProbs,
    global_: ClientProbs,
    joint: dict[float, ClientProbs] | None,
    y_val: np.ndarray,
    grid: np.ndarray,
) -> dict[str, dict[str, list[float]]] | None:
    """One client's validation scores per mode, per lambda metric, per grid value (None without
    validation data): what a client reports for the server to choose each mode's value."""
    if not len(y_val):
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for mode in available_modes(local, joint):
        scores: dict[str, list[float]] = {m: [] for m in LAMBDA_METRICS}
        for probs in candidates(mode, local, global_, joint, grid):
            values = classification_metrics(y_val, probs.val.argmax(1))
            for metric, key in LAMBDA_METRICS.items():
                scores[metric].append(values[key])
        out[mode] = scores
    return out


def available_modes(local: ClientProbs, joint: dict | None) -> tuple[str, ...]:
    """The modes a client can report: mix always; prior where its local head's label prior is
    known; joint where it has joint heads."""
    return tuple(
        m
        for m in MODES
        if m == "mix" or (m == "prior" and local.prior is not None) or (m == "joint" and joint)
    )


def choose_modes(
    per_client: list[dict[str, dict[str, list[float]]] | None],
    grid: np.ndarray,
    joint_values: tuple[float, ...],
) -> dict[str, dict[str, tuple[float, list[float]]]]:
    """Per mode and lambda metric: the chosen value and the mean validation scores over the
    mode's grid (ties: the smallest value)."""
    reported = [s for s in per_client if s is not None]
    if not reported:
        raise ValueError(NO_VALIDATION)
    out = {}
    for mode in reported[0]:
        values = mode_values(mode, grid, joint_values)
        scores = [None if s is None else s[mode] for s in per_client]
        out[mode] = {m: choose_lambda(scores, values, m) for m in LAMBDA_METRICS}
    return out


def pooled_row(probs: ClientProbs, pooled_y: np.ndarray | None) -> dict[str, float]:
    """A model's metrics on the pooled test data ({} where there is none)."""
    if probs.pooled is None or pooled_y is None or not len(pooled_y):
        return {}
    metrics = classification_metrics(pooled_y, probs.pooled.argmax(1))
    return {f"{POOLED}{k}": v for k, v in metrics.items()}


def model_row(c: ClientData, probs: ClientProbs, pooled_y: np.ndarray | None) -> dict:
    """One client's row for one model: its test metrics, and its pooled-test metrics."""
    return {**client_row(c, probs.test), **pooled_row(probs, pooled_y)}


def client_mode_rows(
    *,
    c: ClientData,
    local: ClientProbs,
    global_: ClientProbs,
    joint: dict[float, ClientProbs] | None,
    chosen: dict[str, dict[str, float]],
    grid: np.ndarray,
    joint_values: tuple[float, ...],
    pooled_y: np.ndarray | None = None,
) -> dict[str, dict[str, dict]]:
    """One client's rows per mode and lambda metric, at the values the server chose.

    Args:
        c: the client (its test data; its id and split sizes in the rows).
        local: its local head's probabilities (validation and test).
        global_: the global model's probabilities.
        joint: its joint heads' probabilities by synthetic weight (None: no joint mode).
        chosen: per mode and lambda metric, the value the server chose.
        grid: the lambda grid of the mix and prior modes.
        joint_values: the synthetic weights of the joint mode.
        pooled_y: the labels of the pooled test data (None: no pooled metrics).
    """
    out = {}
    for mode, per_metric in chosen.items():
        values = list(mode_values(mode, grid, joint_values))
        models = candidates(mode, local, global_, joint, grid)
        out[mode] = {
            m: model_row(c, models[values.index(value)], pooled_y)
            for m, value in per_metric.items()
        }
    return out


def summarize_rows(rows: list[dict]) -> dict[str, float]:
    """Mean and std across clients of the test metrics, and of the pooled-test metrics where
    every row has them."""
    out = summarize_clients(rows)
    if rows and all(f"{POOLED}acc" in r for r in rows):
        out.update(summarize_clients(rows, prefix=POOLED))
    return out


def modes_report(
    chosen: dict[str, dict[str, tuple[float, list[float]]]],
    rows: dict[str, dict[str, list[dict]]],
) -> dict:
    """The `downstream_modes` block of metrics.json: per mode and lambda metric, the chosen
    value (`lambda`, or `weight` for joint), the mean validation scores over the grid, the
    clients' rows and their summary."""
    return {
        mode: {
            m: {
                ("weight" if mode == "joint" else "lambda"): value,
                "val_scores": scores,
                "clients": rows[mode][m],
                "summary": summarize_rows(rows[mode][m]),
            }
            for m, (value, scores) in per_metric.items()
        }
        for mode, per_metric in chosen.items()
    }


def evaluation_of(report: dict, metric: str = "accuracy", downstream: str = "mix") -> Evaluation:
    """The run's Evaluation from its `downstream_modes` block: the headline rows are those of
    `downstream` under `metric`; `protocol` (metrics.json `lambda_protocol`) is the mix mode's."""
    check_lambda_metric(metric)
    check_downstream(downstream)
    if downstream not in report:
        raise ValueError(f"downstream mode {downstream!r}: this run does not have it")
    head = report[downstream][metric]
    protocol = {
        m: {k: v for k, v in block.items() if k != "weight"} for m, block in report["mix"].items()
    }
    return Evaluation(
        head["clients"],
        head.get("lambda"),
        report["mix"]["accuracy"]["val_scores"],
        metric,
        protocol,
        modes=report,
        downstream=downstream,
    )


def evaluate_clients(
    *,
    clients: list[ClientData],
    local: list[ClientProbs] | None,
    global_: list[ClientProbs] | None,
    grid_resolution: float,
    metric: str = "accuracy",
    downstream: str = "mix",
    joint: list[dict[float, ClientProbs]] | None = None,
    pooled_y: np.ndarray | None = None,
) -> Evaluation:
    """Per-client test metrics in one process. With a local and a global model, every mode's
    value is chosen on validation and applied on test; with one model its predictions are
    used. `pooled_y`: the labels of the pooled test data (the rows then hold pooled metrics).

    Args:
        clients: every client's data.
        local: per client, its local model's probabilities (None: no local model).
        global_: per client, the global model's probabilities (None: no global model).
        grid_resolution: the step of the lambda grid (--weights_grid_resolution).
        metric: the validation metric that chooses lambda (LAMBDA_METRICS).
        downstream: the mode whose rows head the report (DOWNSTREAM_MODES).
        joint: per client, its joint heads' probabilities by synthetic weight (None: none).
        pooled_y: the labels of the pooled test data (None: no pooled metrics).
    """
    check_lambda_metric(metric)
    check_downstream(downstream)
    if local is None and global_ is None:
        raise ValueError("nothing to evaluate: no local and no global predictions")
    if local is None or global_ is None:
        only = local if local is not None else (global_ or [])
        rows = [model_row(c, p, pooled_y) for c, p in zip(clients, only)]
        return Evaluation(rows, metric=metric)
    grid = lambda_grid(grid_resolution)
    joint_values = tuple(sorted(joint[0])) if joint else JOINT_WEIGHTS
    joints = joint if joint is not None else [None] * len(clients)
    per_client = [
        client_mode_scores(lo, gl, jo, c.y_val, grid)
        for lo, gl, jo, c in zip(local, global_, joints, clients)
    ]
    chosen = choose_modes(per_client, grid, joint_values)
    values = {mode: {m: v for m, (v, _) in pm.items()} for mode, pm in chosen.items()}
    per_row = [
        client_mode_rows(
            c=c,
            local=lo,
            global_=gl,
            joint=jo,
            chosen=values,
            grid=grid,
            joint_values=joint_values,
            pooled_y=pooled_y,
        )
        for c, lo, gl, jo in zip(clients, local, global_, joints)
    ]
    by_mode = {mode: {m: [r[mode][m] for r in per_row] for m in LAMBDA_METRICS} for mode in chosen}
    return evaluation_of(modes_report(chosen, by_mode), metric, downstream)
