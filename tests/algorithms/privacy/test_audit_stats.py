"""The audit's ROC statistics (algorithms/privacy/audit/stats.py) read from scikit-learn's ROC curve
must equal, bit for bit, the hand-written versions they replaced, kept here as the reference: every
distinct score a threshold (ties share one), counts of scores >= it, AUC as Mann-Whitney U with ties
counting half, TPR at FPR as the largest TPR whose FPR is at most the target."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from algorithms.privacy.audit import stats


def reference_roc_counts(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, ...]:
    """The replaced roc_counts: thresholds descending, true and false positives at >= each."""
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]
    tp = len(members) - np.searchsorted(np.sort(members), thresholds, side="left")
    fp = len(nonmembers) - np.searchsorted(np.sort(nonmembers), thresholds, side="left")
    return thresholds, tp, fp


def reference_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """The replaced auc: Mann-Whitney U from the members' ranks, ties counting half."""
    ranks = rankdata(np.concatenate([members, nonmembers]))[: len(members)]
    k = len(members)
    return float((ranks.sum() - k * (k + 1) / 2) / (k * len(nonmembers)))


def reference_tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The replaced tpr_at_fpr: the largest TPR over thresholds with FPR <= fpr, else 0."""
    _, tp, fp = reference_roc_counts(members, nonmembers)
    ok = fp / len(nonmembers) <= fpr
    return float(tp[ok].max() / len(members)) if ok.any() else 0.0


def random_scores(rng: np.random.Generator, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    """Member and non-member scores of random sizes; `tied` draws few distinct values."""
    k, n = rng.integers(1, 120, size=2)
    if tied:
        levels = int(rng.integers(1, 12))
        return (
            rng.integers(0, levels, k).astype(float),
            rng.integers(0, levels, n).astype(float),
        )
    return rng.normal(0.3, 1.0, k), rng.normal(size=n)


@pytest.mark.parametrize("tied", [True, False])
def test_roc_statistics_equal_the_hand_written_ones(tied):
    rng = np.random.default_rng(23 + tied)
    for _ in range(300):
        members, nonmembers = random_scores(rng, tied)
        want, got = reference_roc_counts(members, nonmembers), stats.roc_counts(members, nonmembers)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
        assert stats.auc(members, nonmembers) == reference_auc(members, nonmembers)
        for fpr in (0.0, *stats.LOW_FPRS, 0.5, 1.0):
            want_tpr = reference_tpr_at_fpr(members, nonmembers, fpr)
            assert stats.tpr_at_fpr(members, nonmembers, fpr) == want_tpr


def test_attack_summary_equals_the_hand_written_statistics():
    rng = np.random.default_rng(5)
    members, nonmembers = rng.integers(0, 7, 64).astype(float), rng.integers(0, 6, 80) * 1.0
    s = stats.attack_summary(members, nonmembers, delta=1e-5, confidence=0.95)
    assert s["auc"] == reference_auc(members, nonmembers)
    for f in stats.LOW_FPRS:
        assert s[f"tpr_at_fpr_{f:g}"] == reference_tpr_at_fpr(members, nonmembers, f)
    assert s["best"]["n_thresholds"] == len(np.unique(np.r_[members, nonmembers]))
