"""The lambda protocol and per-client evaluation."""

import numpy as np
import pytest

from algorithms.evaluation.downstream import evaluate_clients
from algorithms.evaluation.protocol import (
    ClientProbs,
    choose_lambda,
    client_val_scores,
    lambda_grid,
    mix,
)
from data.clients import ClientData


def _onehot(labels, n=3, conf=0.9):
    p = np.full((len(labels), n), (1 - conf) / (n - 1))
    p[np.arange(len(labels)), labels] = conf
    return p


def _client(cid, y_val, y_test):
    e = np.zeros((0, 2), np.float32)
    return ClientData(
        cid,
        e,
        np.zeros(0, int),
        np.zeros((len(y_val), 2), np.float32),
        np.asarray(y_val),
        np.zeros((len(y_test), 2), np.float32),
        np.asarray(y_test),
    )


def test_grid_has_both_ends_and_rejects_bad_resolutions():
    np.testing.assert_allclose(lambda_grid(0.1), np.round(np.arange(11) * 0.1, 10))
    assert list(lambda_grid(1.0)) == [0.0, 1.0]
    for bad in (0, -0.1, 1.5, 0.3):
        with pytest.raises(ValueError, match="lambda grid.s resolution"):
            lambda_grid(bad)


def test_mix_endpoints_are_exact():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 3)), rng.random((5, 3))
    assert np.array_equal(mix(a, b, 1.0), a)
    assert np.array_equal(mix(a, b, 0.0), b)


def test_lambda_one_reproduces_the_local_heads_predictions_exactly():
    y_val, y_test = (
        [np.array([0, 1, 2, 0]), np.array([1, 1, 2])],
        [np.array([0, 2, 1]), np.array([2, 0])],
    )
    clients = [_client(i, v, t) for i, (v, t) in enumerate(zip(y_val, y_test))]
    rng = np.random.default_rng(1)
    # local is right on validation, global is confidently wrong
    local = [
        ClientProbs(_onehot(v), rng.dirichlet(np.ones(3), len(t))) for v, t in zip(y_val, y_test)
    ]
    glob = [
        ClientProbs(_onehot((v + 1) % 3, conf=0.99), rng.dirichlet(np.ones(3), len(t)))
        for v, t in zip(y_val, y_test)
    ]
    mixed = evaluate_clients(clients=clients, local=local, global_=glob, grid_resolution=1.0)
    assert mixed.lam == 1.0 and mixed.val_acc == [0.0, 1.0]
    local_only = evaluate_clients(clients=clients, local=local, global_=None, grid_resolution=1.0)
    assert local_only.lam is None and local_only.protocol is None
    assert mixed.rows == local_only.rows


def test_lambda_is_chosen_by_mean_validation_accuracy_ties_to_the_smallest():
    y = [np.array([0, 1])]
    same = [ClientProbs(_onehot(y[0]), _onehot(y[0]))]
    grid = lambda_grid(0.5)
    per_client = [client_val_scores(same[0], same[0], y[0], grid)]
    lam, scores = choose_lambda(per_client, grid)
    assert lam == 0.0 and scores == [1.0, 1.0, 1.0]
    empty = client_val_scores(same[0], same[0], np.array([], int), grid)
    assert empty is None
    with pytest.raises(ValueError, match="--val_frac"):
        choose_lambda([empty], grid)


def test_rows_carry_sizes_and_metrics():
    c = _client(7, [0], [0, 1, 1, 2])
    probs = [ClientProbs(_onehot([0]), _onehot([0, 1, 2, 2]))]
    rows = evaluate_clients(clients=[c], local=None, global_=probs, grid_resolution=0.1).rows
    assert rows[0]["id"] == 7 and rows[0]["n_test"] == 4 and rows[0]["n_val"] == 1
    assert rows[0]["test_acc"] == pytest.approx(0.75)
    assert rows[0]["test_balanced_acc"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_balanced_accuracy_picks_the_synthetic_head_that_accuracy_ignores():
    # validation: 8 records of the frequent class 0, one each of the rare classes 1 and 2; the
    # local head predicts 0 always (accuracy 0.8), the global one is right on 1 and 2 only
    y_val = np.array([0] * 8 + [1, 2])
    local = ClientProbs(_onehot(np.zeros(10, int)), _onehot([0, 0, 0]))
    glob = ClientProbs(_onehot(np.array([1] * 8 + [1, 2])), _onehot([1, 1, 2]))
    clients = [_client(0, y_val, [0, 1, 2])]
    grid = lambda_grid(1.0)
    scores = client_val_scores(local, glob, y_val, grid)
    assert scores["accuracy"] == [0.2, 0.8]
    assert scores["balanced_accuracy"] == pytest.approx([2 / 3, 1 / 3])
    by_acc = evaluate_clients(
        clients=clients, local=[local], global_=[glob], grid_resolution=1.0, metric="accuracy"
    )
    by_bal = evaluate_clients(
        clients=clients,
        local=[local],
        global_=[glob],
        grid_resolution=1.0,
        metric="balanced_accuracy",
    )
    assert (by_acc.lam, by_bal.lam) == (1.0, 0.0)
    # both runs report the protocol under both metrics, and the rows of the chosen one
    assert by_acc.protocol == by_bal.protocol
    assert by_bal.protocol["balanced_accuracy"]["lambda"] == 0.0
    assert by_bal.rows[0]["test_acc"] == pytest.approx(2 / 3)
    assert by_bal.protocol["accuracy"]["summary"]["test_acc_mean"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="lambda metric must be one of"):
        evaluate_clients(
            clients=clients, local=[local], global_=[glob], grid_resolution=1.0, metric="f1"
        )
