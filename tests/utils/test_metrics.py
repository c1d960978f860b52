"""Classification summaries and fidelity metrics against values computed by hand."""

import numpy as np
import pytest

from utils.metrics import classification_metrics, prdc, sinkhorn_wasserstein, summarize_clients


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 0, 1])
    p = np.array([0, 0, 1, 1])
    m = classification_metrics(y, p)
    assert m["acc"] == pytest.approx(0.75)
    assert m["balanced_acc"] == pytest.approx((2 / 3 + 1) / 2)
    f1_0, f1_1 = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 1 / 1.5
    assert m["f1_macro"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["f1_weighted"] == pytest.approx((3 * f1_0 + f1_1) / 4)


def test_summary_mean_std_and_test_size_weighting():
    rows = [
        {
            "n_test": 1,
            **{f"test_{k}": 0.2 for k in ("acc", "balanced_acc", "f1_macro", "f1_weighted")},
        },
        {
            "n_test": 3,
            **{f"test_{k}": 0.6 for k in ("acc", "balanced_acc", "f1_macro", "f1_weighted")},
        },
    ]
    s = summarize_clients(rows)
    assert s["test_acc_mean"] == pytest.approx(0.4)
    assert s["test_acc_std"] == pytest.approx(0.2)
    assert s["test_acc_weighted"] == pytest.approx(0.5)


def test_sinkhorn_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    assert sinkhorn_wasserstein(x, x) < 1e-3
    shift = np.array([3.0, 0, 0, 0], np.float32)
    # geomloss's p=2 cost is |x - y|^2 / 2: a translation by d costs |d|^2 / 2
    assert sinkhorn_wasserstein(x, x + shift) == pytest.approx(3.0 / np.sqrt(2), rel=0.02)
    assert sinkhorn_wasserstein(x, x + shift) > sinkhorn_wasserstein(x, x + shift / 3)


def test_prdc_on_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    same = prdc(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.3)
    far = prdc(x, x + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # synthetic data collapsed on one real point: precise, but no recall or coverage
    collapsed = prdc(x, np.repeat(x[:1], 50, axis=0) + 1e-3 * rng.normal(size=(50, 3)))
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prdc_equals_the_authors_package(dtype, capsys):
    """utils.metrics.prdc against `prdc.compute_prdc` (Naeem et al.'s own code, PyPI prdc==0.2)
    on random data without ties: precision, recall and coverage equal; density up to rounding
    (the package multiplies by 1/k where ours divides by k)."""
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    rng = np.random.default_rng(23)
    for _ in range(20):
        n_real, n_syn, dim = rng.integers(10, 120, size=3)
        real = rng.normal(size=(n_real, dim)).astype(dtype)
        synthetic = (1.3 * rng.normal(size=(n_syn, dim)) + 0.2).astype(dtype)
        for k in (1, 3, 5):
            ours = prdc(real, synthetic, k=k)
            theirs = {key: float(v) for key, v in compute_prdc(real, synthetic, k).items()}
            for key in ("precision", "recall", "coverage"):
                assert ours[key] == theirs[key], key
            assert ours["density"] == pytest.approx(theirs["density"], rel=1e-14, abs=1e-15)
    capsys.readouterr()  # compute_prdc prints the set sizes
