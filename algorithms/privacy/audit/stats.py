"""The audit's statistics: ROC counts, AUC, TPR at low FPR, and the empirical epsilon lower
bound from one-sided Clopper-Pearson intervals (see the package docstring)."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta as beta_dist
from sklearn.metrics import roc_curve

LOW_FPRS = (0.01, 0.1)


def clopper_pearson(k: np.ndarray | int, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds on a binomial proportion from k successes in n trials
    (k may be an array): (lower, upper), each holding with probability at least 1 - alpha."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = np.where(k == 0, 0.0, beta_dist.ppf(alpha, k, n - k + 1))
        upper = np.where(k == n, 1.0, beta_dist.ppf(1 - alpha, k + 1, n - k))
    return lower, upper


def _roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, ...]:
    """scikit-learn's full ROC curve (no points dropped) of members (positives) against
    non-members: FPR, TPR and thresholds, its first point (0, 0) at an infinite threshold."""
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    scores = np.concatenate([members, nonmembers])
    return roc_curve(labels, scores, drop_intermediate=False)


def roc_counts(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, ...]:
    """Thresholds (every distinct score, descending) and, for each, the members and non-members
    whose score is >= it (true and false positives), read from scikit-learn's ROC curve; the
    rates are turned back into exact counts by rounding."""
    fpr, tpr, thresholds = _roc_curve(members, nonmembers)
    tp = np.rint(tpr[1:] * len(members)).astype(np.int64)
    fp = np.rint(fpr[1:] * len(nonmembers)).astype(np.int64)
    return thresholds[1:], tp, fp


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Probability that a member scores above a non-member, ties counting half: the trapezoid
    area under scikit-learn's ROC curve, summed in exact integer counts and divided once, so
    that it is the correctly rounded Mann-Whitney U / (K_in K_out) (sklearn's roc_auc_score sums
    float rates and can differ in the last bit, which would change stored results)."""
    _, tp, fp = roc_counts(members, nonmembers)
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    twice_u = int(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])))
    return twice_u / (2 * len(members) * len(nonmembers))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The largest TPR over ROC points whose FPR is at most `fpr` (resolution 1/K); 0 when only
    the all-negative point (0, 0) qualifies."""
    fprs, tprs, _ = _roc_curve(members, nonmembers)
    return float(tprs[fprs <= fpr].max())


def dp_epsilon(tpr_lo: np.ndarray, fpr_hi: np.ndarray, delta: float) -> tuple[np.ndarray, ...]:
    """The epsilon that each (TPR_lo, FPR_hi) pair forces on an (epsilon, delta)-DP mechanism,
    from either inequality (at least 0), and which one gave it (0: TPR/FPR, 1: TNR/FNR)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        forms = np.stack(
            [
                np.log((tpr_lo - delta) / fpr_hi),
                np.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo)),
            ]
        )
    forms = np.nan_to_num(forms, nan=0.0, neginf=0.0, posinf=np.inf).clip(min=0.0)
    return forms.max(axis=0), forms.argmax(axis=0)


def epsilon_lower_bound(
    members: np.ndarray, nonmembers: np.ndarray, delta: float, confidence: float
) -> dict:
    """The empirical epsilon lower bound (see the module docstring) and the (TPR, FPR) pair that
    gives it, with its Clopper-Pearson bounds; `ceiling`: what TPR 1, FPR 0 would give."""
    thresholds, tp, fp = roc_counts(members, nonmembers)
    k_in, k_out = len(members), len(nonmembers)
    alpha = (1.0 - confidence) / (2 * len(thresholds))
    tpr_lo, _ = clopper_pearson(tp, k_in, alpha)
    _, fpr_hi = clopper_pearson(fp, k_out, alpha)
    eps, form = dp_epsilon(tpr_lo, fpr_hi, delta)
    ceiling, _ = dp_epsilon(
        clopper_pearson(k_in, k_in, alpha)[0], clopper_pearson(0, k_out, alpha)[1], delta
    )
    i = int(np.argmax(eps))
    best = {
        "eps_lb": float(eps[i]),
        "form": ("tpr/fpr", "tnr/fnr")[int(form[i])] if eps[i] > 0 else "none",
        "threshold": float(thresholds[i]),
        "tpr": int(tp[i]) / k_in,
        "fpr": int(fp[i]) / k_out,
        "tpr_lo": float(tpr_lo[i]),
        "fpr_hi": float(fpr_hi[i]),
    }
    return {**best, "ceiling": float(ceiling), "n_thresholds": len(thresholds)}


def attack_summary(
    members: np.ndarray, nonmembers: np.ndarray, delta: float, confidence: float
) -> dict:
    """AUC, TPR at low FPR and the epsilon lower bound of one attack's scores."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    bound = epsilon_lower_bound(members, nonmembers, delta, confidence)
    return {
        "auc": auc(members, nonmembers),
        **{f"tpr_at_fpr_{f:g}": tpr_at_fpr(members, nonmembers, f) for f in LOW_FPRS},
        "eps_lb": bound.pop("eps_lb"),
        "eps_lb_ceiling": bound.pop("ceiling"),
        "best": bound,
    }
