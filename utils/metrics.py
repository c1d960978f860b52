"""Every metric the project reports: classification per client, summaries across clients, and
fidelity of synthetic embeddings (Wasserstein via Sinkhorn, precision/recall/density/coverage)."""

from __future__ import annotations

import warnings

import numpy as np

CLASSIFICATION_METRICS = ("acc", "balanced_acc", "f1_macro", "f1_weighted")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and weighted F1 (fractions in [0, 1]), as sklearn
    computes them (balanced accuracy averages recall over the classes present in y_true)."""
    # imported here: scikit-learn (with SciPy) is a tenth of a Flower ClientApp's start-up, and
    # only the end-of-run messages compute metrics (each message starts a new process)
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes predicted but absent from y_true
        return {
            "acc": float(accuracy_score(y_true, y_pred)),
            "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        }


def summarize_clients(clients: list[dict], prefix: str = "test_") -> dict[str, float]:
    """Mean and std across clients (population std, ddof=0) and the test-size-weighted mean
    (only where every client's row has its test size: a Flower site sends none). No rows (the
    sites kept their metrics): no summary."""
    if not clients:
        return {}
    sized = all("n_test" in c for c in clients)
    weights = np.array([c["n_test"] for c in clients], dtype=np.float64) if sized else None
    out = {}
    for name in CLASSIFICATION_METRICS:
        values = np.array([c[f"{prefix}{name}"] for c in clients], dtype=np.float64)
        out[f"{prefix}{name}_mean"] = float(values.mean())
        out[f"{prefix}{name}_std"] = float(values.std())
        if weights is not None:
            out[f"{prefix}{name}_weighted"] = float(np.average(values, weights=weights))
    return out


def sinkhorn_wasserstein(
    real: np.ndarray, synthetic: np.ndarray, blur: float = 0.01, device: str = "cpu"
) -> float:
    """The paper's fidelity: sqrt of geomloss's debiased Sinkhorn loss (p=2, blur=0.01),
    computed on `device`; NaN when a set is empty (no distance to measure).

    geomloss's p=2 cost is |x-y|^2 / 2, so the value is a (blurred) W2 distance up to sqrt(2)."""
    if len(real) == 0 or len(synthetic) == 0:
        return float("nan")
    import torch
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, backend="tensorized")
    x = torch.as_tensor(np.asarray(real, dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(synthetic, dtype=np.float32), device=device)
    with torch.no_grad():
        value = float(loss(x, y))
    return float(np.sqrt(max(value, 0.0)))


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def prdc(real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of synthetic vs real (Naeem et al., 2020),
    with k-nearest-neighbour balls (k=5 as in the paper); NaN when a set has <= 1 point.

    tests/utils/test_metrics.py checks it against the authors' package (`prdc.compute_prdc`): equal
    on data without ties. It is not a call to that package because the package differs where
    stored results would see it: density is (1/k) * mean rather than mean / k (the last bit
    differs in about a third of random cases), balls are open (< rather than <=, so duplicate
    points count differently), distances come from sklearn in the input's dtype, and it prints
    to stdout."""
    n_real, n_syn = len(real), len(synthetic)
    k = min(k, n_real - 1, n_syn - 1)
    if k < 1:
        return {
            "precision": float("nan"),
            "recall": float("nan"),
            "density": float("nan"),
            "coverage": float("nan"),
        }
    d_rr = _pairwise_sq(real, real)
    d_ss = _pairwise_sq(synthetic, synthetic)
    d_rs = _pairwise_sq(real, synthetic)
    # k-th neighbour distance, excluding the point itself (column 0 after sorting is 0).
    r_real = np.sort(d_rr, axis=1)[:, k]
    r_syn = np.sort(d_ss, axis=1)[:, k]
    inside_real = d_rs <= r_real[:, None]  # [i, j]: synthetic j inside real i's ball
    precision = inside_real.any(axis=0).mean()
    recall = (d_rs <= r_syn[None, :]).any(axis=1).mean()
    density = inside_real.sum(axis=0).mean() / k
    coverage = (d_rs.min(axis=1) <= r_real).mean()
    return {
        "precision": float(precision),
        "recall": float(recall),
        "density": float(density),
        "coverage": float(coverage),
    }
