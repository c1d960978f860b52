"""Data-independent embedding normalization, so that no statistic of private data is used.

Every method works on per-record standardized embeddings: each row is centred and scaled by its
own mean and standard deviation over the embedding dimensions. The transform reads one record
at a time, so it costs no privacy and cannot leak one record through another. The generative
models, whose decoders end in a sigmoid, work in `(0, 1)` through a fixed logistic squash.
"""

from __future__ import annotations

import numpy as np

# Floor of a record's standard deviation: a constant row (e.g. all zeros from a ReLU backbone)
# maps to zeros instead of NaN.
STD_FLOOR = 1e-6
# Squashed values are kept this far from 0 and 1 so that unsquashing stays finite.
SQUASH_EPS = 1e-4


def standardize_records(x: np.ndarray) -> np.ndarray:
    """Centre and scale each row by its own mean and std over dimensions (float32)."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    return ((x - mean) / np.maximum(std, STD_FLOOR)).astype(np.float32)


def squash(u: np.ndarray, temperature: float) -> np.ndarray:
    """Map standardized values into (0, 1) with a fixed logistic: sigmoid(u / temperature)."""
    z = np.clip(np.asarray(u, dtype=np.float64) / temperature, -60.0, 60.0)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def unsquash(s: np.ndarray, temperature: float) -> np.ndarray:
    """Inverse of `squash`, with values clipped into [SQUASH_EPS, 1 - SQUASH_EPS] first."""
    s = np.clip(np.asarray(s, dtype=np.float64), SQUASH_EPS, 1.0 - SQUASH_EPS)
    return (temperature * np.log(s / (1.0 - s))).astype(np.float32)
