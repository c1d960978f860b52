"""The downstream modes (mix, prior, joint) and the pooled-test evaluation."""

import numpy as np
import pytest

from algorithms.evaluation.downstream import (
    JOINT_WEIGHTS,
    MODES,
    POOLED,
    correct_prior,
    evaluate_clients,
    label_prior,
    with_prior,
)
from algorithms.evaluation.heads import HeadConfig, predict_proba, train_head
from algorithms.evaluation.protocol import ClientProbs
from data.clients import ClientData


def test_label_prior_is_smoothed_and_sums_to_one():
    p = label_prior(np.array([0, 0, 0, 1]), 3)
    assert p == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_correct_prior_is_bayes_rule_under_label_shift():
    """p(y|x) under prior pi_s, moved to pi_t: proportional to p * pi_t / pi_s."""
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    same = correct_prior(p, np.array([0.3, 0.7]), np.array([0.3, 0.7]))
    assert np.array_equal(same, p)
    moved = correct_prior(p, np.array([0.8, 0.2]), np.array([0.5, 0.5]))
    assert moved[0] == pytest.approx([0.8, 0.2])
    assert moved[1] == pytest.approx([0.72 / 0.74, 0.02 / 0.74])
    assert moved.sum(1) == pytest.approx([1.0, 1.0])


def _skewed_clients(rng, n_clients=3, n_classes=3):
    """Clients whose labels are skewed toward their own class, with overlapping features: a
    global head trained on balanced data under-predicts each client's frequent class."""
    clients = []
    for i in range(n_clients):

        def draw(n, i=i):
            y = np.where(rng.random(n) < 0.7, i, rng.integers(0, n_classes, n))
            x = np.eye(n_classes)[y] * 1.0 + rng.normal(0, 1.0, (n, n_classes))
            return x, y

        xtr, ytr = draw(200)
        xva, yva = draw(200)
        xte, yte = draw(400)
        clients.append(ClientData(i, xtr, ytr, xva, yva, xte, yte))
    return clients


def test_prior_mode_beats_the_uncorrected_global_head_on_skewed_clients():
    rng = np.random.default_rng(0)
    clients = _skewed_clients(rng)
    cfg = HeadConfig(epochs=200, lr=0.05)
    # the "global" head: trained on balanced data (uniform prior)
    yb = np.repeat(np.arange(3), 300)
    xb = np.eye(3)[yb] + rng.normal(0, 1.0, (900, 3))
    glob = train_head(x=xb, y=yb, n_classes=3, cfg=cfg, seed=1)
    local, global_ = [], []
    for c in clients:
        head = train_head(
            x=c.x_train[:20], y=c.y_train[:20], n_classes=3, cfg=cfg, seed=2
        )  # a weak local head
        prior = label_prior(c.y_train, 3)
        local.append(
            ClientProbs(predict_proba(head, c.x_val), predict_proba(head, c.x_test), None, prior)
        )
        global_.append(
            ClientProbs(
                predict_proba(glob, c.x_val),
                predict_proba(glob, c.x_test),
                None,
                label_prior(yb, 3),
            )
        )
    ev = evaluate_clients(clients=clients, local=local, global_=global_, grid_resolution=0.1)
    acc = {mode: ev.modes[mode]["accuracy"]["summary"]["test_acc_mean"] for mode in ev.modes}
    assert set(ev.modes) == {"mix", "prior"}  # no joint heads given
    plain = np.mean([np.mean(g.test.argmax(1) == c.y_test) for g, c in zip(global_, clients)])
    fixed = np.mean(
        [
            np.mean(with_prior(g, lo.prior).test.argmax(1) == c.y_test)
            for g, lo, c in zip(global_, local, clients)
        ]
    )
    assert fixed > plain + 0.02
    assert acc["prior"] >= acc["mix"]


def test_every_mode_and_the_pooled_test_are_reported_and_joint_weight_zero_is_local():
    rng = np.random.default_rng(1)
    clients = _skewed_clients(rng)
    pooled_x = np.concatenate([c.x_test for c in clients])
    pooled_y = np.concatenate([c.y_test for c in clients])

    def probs(seed, c, prior=None):
        h = train_head(x=c.x_train, y=c.y_train, n_classes=3, cfg=HeadConfig(epochs=20), seed=seed)
        return ClientProbs(
            predict_proba(h, c.x_val), predict_proba(h, c.x_test), predict_proba(h, pooled_x), prior
        )

    local = [probs(0, c, label_prior(c.y_train, 3)) for c in clients]
    global_ = [probs(1, c) for c in clients]
    # joint heads: weight 0 is the local head; the others anything distinct
    joint = [
        {w: (lo if w == 0 else probs(int(10 * w) + 2, c)) for w in JOINT_WEIGHTS}
        for lo, c in zip(local, clients)
    ]
    for downstream in MODES:
        ev = evaluate_clients(
            clients=clients,
            local=local,
            global_=global_,
            grid_resolution=0.5,
            metric="accuracy",
            downstream=downstream,
            joint=joint,
            pooled_y=pooled_y,
        )
        assert set(ev.modes) == set(MODES)
        assert ev.rows == ev.modes[downstream]["accuracy"]["clients"]
        for mode in MODES:
            for block in ev.modes[mode].values():
                assert ("weight" in block) == (mode == "joint")
                assert all(f"{POOLED}acc" in r and "test_acc" in r for r in block["clients"])
                assert f"{POOLED}acc_mean" in block["summary"]
        # the mix block is the paper's lambda protocol
        assert ev.protocol["accuracy"]["lambda"] == ev.modes["mix"]["accuracy"]["lambda"]
    # a client's pooled accuracy is its model on every client's test data
    only_local = evaluate_clients(
        clients=clients, local=local, global_=None, grid_resolution=0.5, pooled_y=pooled_y
    )
    for row, lo in zip(only_local.rows, local):
        assert row[f"{POOLED}acc"] == pytest.approx(np.mean(lo.pooled.argmax(1) == pooled_y))
    # joint at weight 0 is exactly the local head: forcing it reproduces the local rows
    zero = [{0.0: lo} for lo in local]
    ev = evaluate_clients(
        clients=clients,
        local=local,
        global_=global_,
        grid_resolution=0.5,
        metric="accuracy",
        downstream="joint",
        joint=zero,
        pooled_y=pooled_y,
    )
    assert ev.modes["joint"]["accuracy"]["weight"] == 0.0
    assert ev.rows == only_local.rows


@pytest.mark.parametrize(
    ("method", "flags"),
    [("fedlambda", ["--n_rounds", "3", "--local_epochs", "20"]), ("dpcvae", None)],
)
def test_a_run_reports_every_mode_and_its_headline_is_the_chosen_one(
    gauss_db, tmp_path, method, flags
):
    """main.py: every downstream mode under every lambda metric, with pooled-test metrics;
    --downstream picks the headline rows; the tables read any mode from the same run."""
    from helpers.tiny import FAST, TINY

    import main as main_module
    from utils.collect import collect
    from utils.results import read_metrics

    flags = flags if flags is not None else TINY[method]
    for mode in ("joint", "prior"):
        out = tmp_path / mode
        argv = ["--database_root", str(gauss_db), "--results_dir", str(out), *FAST]
        assert main_module.main([*argv, "--method", method, *flags, "--downstream", mode]) == 0
        m = read_metrics(out)
        assert m["downstream"] == mode and set(m["downstream_modes"]) == set(MODES)
        for per_metric in m["downstream_modes"].values():
            assert set(per_metric) == {"accuracy", "balanced_accuracy"}
        assert m["clients"] == m["downstream_modes"][mode]["accuracy"]["clients"]
        assert all(f"{POOLED}acc" in row for row in m["clients"])
        assert f"{POOLED}acc_mean" in m["summary"]
        assert (
            m["lambda_protocol"]["accuracy"]["lambda"]
            == (m["downstream_modes"]["mix"]["accuracy"]["lambda"])
        )
    # the two runs differ only in their headline: same config key, same modes
    a, b = read_metrics(tmp_path / "joint"), read_metrics(tmp_path / "prior")
    assert a["config_key"] == b["config_key"] and a["downstream_modes"] == b["downstream_modes"]
    (row,) = collect([tmp_path / "joint"], downstream="prior")
    assert row["downstream"] == "prior" and row["pooled_acc_mean"] is not None
    weight = a["downstream_modes"]["joint"]["accuracy"]["weight"]
    assert collect([tmp_path / "joint"])[0]["lambda"] == weight
