"""algorithms/evaluation/heads.py: the linear heads' config, optimizer, seeded init, training
(plain, weighted, anchored) and prediction."""

import numpy as np
import pytest
import torch
from torch import nn

from algorithms.evaluation.heads import (
    HeadConfig,
    make_optimizer,
    new_head,
    predict_proba,
    train_head,
)


def _blobs(n_per_class=30, dim=4, n_classes=3, seed=0, spread=0.3):
    """Well separated Gaussian blobs: a linear head can classify them perfectly."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(n_classes, dim)
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centers])
    y = np.repeat(np.arange(n_classes), n_per_class)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


def _params(head):
    return [p.detach().clone() for p in head.parameters()]


def _same(a, b, atol=0.0):
    return all(torch.allclose(p, q, atol=atol, rtol=0) for p, q in zip(a, b))


# --- HeadConfig ------------------------------------------------------------------------------


def test_defaults_are_the_papers_heads():
    cfg = HeadConfig()
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.optimizer) == (100, 1e-3, 5e-4, "adam")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, r"^--local_epochs must be >= 1, got 0"),
        ({"lr": 0.0}, r"^--lr must be > 0, got 0.0"),
        ({"lr": -1e-3}, r"^--lr must be > 0"),
        ({"lr": float("nan")}, r"^--lr must be > 0, got nan"),
        ({"weight_decay": -0.1}, r"^--weight_decay must be >= 0, got -0.1"),
        ({"optimizer": "rmsprop"}, r"^--classifier_optimizer must be adam or sgd, got 'rmsprop'"),
    ],
)
def test_a_bad_value_is_refused_naming_its_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**kwargs)


def test_the_edges_of_the_valid_ranges_are_accepted():
    HeadConfig(epochs=1, weight_decay=0.0, optimizer="sgd", lr=1e-12)


# --- make_optimizer --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_make_optimizer_builds_the_named_optimizer_with_its_settings(name, cls):
    params = list(nn.Linear(3, 2).parameters())
    opt = make_optimizer(name, params, lr=0.25, weight_decay=0.01)
    assert type(opt) is cls
    (group,) = opt.param_groups
    assert group["lr"] == 0.25 and group["weight_decay"] == 0.01
    assert group["params"] == params
    if name == "sgd":  # the plain SGD the paper's scripts use: no momentum
        assert group["momentum"] == 0
    assert make_optimizer(name, params, lr=0.1).param_groups[0]["weight_decay"] == 0.0


def test_make_optimizer_refuses_an_unknown_name():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw' \(expected adam or sgd\)"):
        make_optimizer("adamw", nn.Linear(3, 2).parameters(), lr=0.1)


# --- new_head --------------------------------------------------------------------------------


def test_new_head_is_a_linear_layer_seeded_by_its_seed():
    head = new_head(5, 3, seed=11)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (5, 3)
    assert _same(_params(head), _params(new_head(5, 3, seed=11)))
    assert not torch.equal(head.weight, new_head(5, 3, seed=12).weight)
    # the global RNG does not decide the init, and is not consumed by it
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert _same(_params(head), _params(new_head(5, 3, seed=11)))
    assert torch.equal(torch.get_rng_state(), state)


# --- train_head ------------------------------------------------------------------------------


def test_a_head_learns_a_separable_problem():
    x, y = _blobs(seed=0)
    x_test, y_test = _blobs(seed=1)
    start = predict_proba(new_head(4, 3, seed=3), x_test).argmax(1)
    head = train_head(x=x, y=y, n_classes=3, cfg=HeadConfig(epochs=100, lr=0.05), seed=3)
    assert not head.training  # returned in eval mode
    assert np.mean(predict_proba(head, x).argmax(1) == y) == 1.0
    assert np.mean(predict_proba(head, x_test).argmax(1) == y_test) == 1.0
    assert np.mean(start == y_test) < 0.9  # the untrained head did not already know it


def test_training_is_deterministic_in_its_seed():
    x, y = _blobs(seed=4)
    cfg = HeadConfig(epochs=10)
    a, b = (
        train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=5),
        train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=5),
    )
    assert _same(_params(a), _params(b))
    assert not _same(_params(a), _params(train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=6)))


def test_one_sgd_epoch_is_one_full_batch_gradient_step_with_weight_decay():
    """The gradient of the mean cross-entropy of a linear softmax head, by hand:
    dL/dlogits = (softmax - onehot) / n; torch's SGD weight decay adds wd * param."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    lr, wd = 0.5, 0.1
    start = new_head(4, 3, seed=9)
    w0, b0 = start.weight.detach().double(), start.bias.detach().double()
    xd = torch.as_tensor(x, dtype=torch.float64)
    p = torch.softmax(xd @ w0.T + b0, dim=1)
    g = (p - torch.nn.functional.one_hot(torch.as_tensor(y), 3).double()) / len(y)
    w1 = w0 - lr * (g.T @ xd + wd * w0)
    b1 = b0 - lr * (g.sum(0) + wd * b0)
    cfg = HeadConfig(epochs=1, lr=lr, weight_decay=wd, optimizer="sgd")
    head = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=9)
    torch.testing.assert_close(head.weight.detach().double(), w1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.bias.detach().double(), b1, atol=1e-6, rtol=1e-5)


def test_unit_sample_weights_give_the_plain_head():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
    cfg = HeadConfig(epochs=5)
    plain = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=7)
    weighted = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=7, sample_weight=np.ones(50))
    assert _same(_params(plain), _params(weighted), atol=1e-6)


def test_sample_weights_weigh_records_in_a_normalized_loss():
    """Weight 0 leaves a record out; weight 2 counts it twice; the scale of the weights does not
    matter (the loss is divided by their sum)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    cfg = HeadConfig(epochs=20, lr=0.05)
    w = np.r_[np.ones(25), np.zeros(15)]
    dropped = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=1, sample_weight=w)
    assert _same(
        _params(dropped),
        _params(train_head(x=x[:25], y=y[:25], n_classes=3, cfg=cfg, seed=1)),
        atol=1e-5,
    )
    w = np.r_[2 * np.ones(10), np.ones(30)]
    doubled = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=1, sample_weight=w)
    repeated = train_head(x=np.r_[x, x[:10]], y=np.r_[y, y[:10]], n_classes=3, cfg=cfg, seed=1)
    assert _same(_params(doubled), _params(repeated), atol=1e-5)
    scaled = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=1, sample_weight=10 * w)
    assert _same(_params(doubled), _params(scaled), atol=1e-5)
    # and the weights do change the head
    assert not _same(
        _params(doubled), _params(train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=1)), atol=1e-4
    )


def test_an_anchored_head_starts_at_its_anchor_whatever_the_seed():
    x, y = _blobs(seed=5)
    anchor = {k: 3.0 + v for k, v in new_head(4, 3, seed=0).state_dict().items()}
    cfg = HeadConfig(epochs=3, optimizer="sgd", lr=1e-3)
    a = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=1, anchor=anchor)
    b = train_head(x=x, y=y, n_classes=3, cfg=cfg, seed=2, anchor=anchor)
    assert _same(_params(a), _params(b))
    # three small steps away from the anchor, far from any seeded init
    assert _same(_params(a), list(anchor.values()), atol=0.05)
    assert not _same(_params(a), list(anchor.values()))
    # the anchor is read, not trained in place
    assert torch.equal(anchor["weight"], 3.0 + new_head(4, 3, seed=0).weight.detach())


def test_the_anchor_strength_pulls_the_head_toward_the_anchor():
    x, y = _blobs(seed=6)
    flipped = (y + 1) % 3  # labels the anchor gets wrong: training wants to move away from it
    anchor = {
        k: v.clone()
        for k, v in train_head(x=x, y=y, n_classes=3, cfg=HeadConfig(epochs=50), seed=0)
        .state_dict()
        .items()
    }
    cfg = HeadConfig(epochs=50, lr=1e-2)

    def distance(strength):
        head = train_head(
            x=x, y=flipped, n_classes=3, cfg=cfg, seed=8, anchor=anchor, anchor_strength=strength
        )
        params = head.state_dict().values()
        return sum(float(((p - a) ** 2).sum()) for p, a in zip(params, anchor.values()))

    free, mild, strong = distance(0.0), distance(1.0), distance(100.0)
    assert free > mild > strong
    assert strong < 0.01 * free
    # a huge pull keeps it at its anchor
    assert distance(1e6) < 1e-3


# --- predict_proba ---------------------------------------------------------------------------


def test_predict_proba_is_the_softmax_of_the_logits_in_float64():
    head = new_head(4, 3, seed=1)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    p = predict_proba(head, x)
    assert p.dtype == np.float64 and p.shape == (6, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
    logits = x.astype(np.float64) @ head.weight.detach().double().numpy().T
    logits += head.bias.detach().double().numpy()
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, expected / expected.sum(1, keepdims=True), rtol=1e-5)


def test_predict_proba_of_no_records_has_the_heads_classes():
    assert predict_proba(new_head(4, 5, seed=0), np.zeros((0, 4))).shape == (0, 5)
