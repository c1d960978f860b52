"""The lambda protocol and per-client evaluation."""

import numpy as np
import pytest

from algorithms.evaluation import (
    ClientProbs,
    evaluate_clients,
    lambda_grid,
    mix,
    select_lambda,
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
        with pytest.raises(ValueError, match="--weights_grid_resolution"):
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
    rows, lam, scores = evaluate_clients(clients, local, glob, grid_resolution=1.0)
    assert lam == 1.0 and scores == [0.0, 1.0]
    local_only, none_lam, _ = evaluate_clients(clients, local, None, grid_resolution=1.0)
    assert none_lam is None
    assert rows == local_only


def test_lambda_is_chosen_by_mean_validation_accuracy_ties_to_the_smallest():
    y = [np.array([0, 1])]
    same = [ClientProbs(_onehot(y[0]), _onehot(y[0]))]
    lam, scores = select_lambda(same, same, y, lambda_grid(0.5))
    assert lam == 0.0 and scores == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="--val_frac"):
        select_lambda(same, same, [np.array([], int)], lambda_grid(0.5))


def test_rows_carry_sizes_and_metrics():
    c = _client(7, [0], [0, 1, 1, 2])
    probs = [ClientProbs(_onehot([0]), _onehot([0, 1, 2, 2]))]
    rows, _, _ = evaluate_clients([c], None, probs, 0.1)
    assert rows[0]["id"] == 7 and rows[0]["n_test"] == 4 and rows[0]["n_val"] == 1
    assert rows[0]["test_acc"] == pytest.approx(0.75)
    assert rows[0]["test_balanced_acc"] == pytest.approx((1 + 0.5 + 1) / 3)
