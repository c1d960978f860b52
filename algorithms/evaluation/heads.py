"""Linear classification heads on embeddings: training (the paper's protocol) and prediction."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import flag, flag_name
from utils.seeding import seeded


@dataclass(frozen=True)
class HeadConfig:
    """The paper's linear heads: Adam, lr 1e-3, weight decay 5e-4, 100 full-batch epochs."""

    epochs: int = field(
        default=100,
        metadata=flag(
            "--local_epochs",
            section="head",
            help="full-batch epochs of a linear head. Default: {default}",
        ),
    )
    lr: float = field(
        default=1e-3,
        metadata=flag(
            "--lr",
            section="head",
            help="learning rate of the heads and of the CVAE (the CGAN has its own). "
            "Default: {default}",
        ),
    )
    weight_decay: float = field(
        default=5e-4,
        metadata=flag(
            "--weight_decay", section="head", help="weight decay of the heads. Default: {default}"
        ),
    )
    optimizer: str = field(
        default="adam",
        metadata=flag(
            "--classifier_optimizer",
            section="head",
            choices=["adam", "sgd"],
            help="optimizer of the heads. Default: {default}",
        ),
    )

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        if self.epochs < 1:
            raise ValueError(f"{name('epochs')} must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"{name('lr')} must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"{name('weight_decay')} must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"{name('optimizer')} must be adam or sgd, got {self.optimizer!r}")


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam or plain SGD, the two optimizers the paper's scripts use."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (expected adam or sgd)")


def new_head(dim: int, n_classes: int, seed: int) -> nn.Linear:
    """A linear head with a seeded initialization."""
    return seeded(seed, lambda: nn.Linear(dim, n_classes))


def train_head(
    *,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: HeadConfig,
    seed: int,
    device: str | torch.device = "cpu",
    sample_weight: np.ndarray | None = None,
    anchor: dict[str, torch.Tensor] | None = None,
    anchor_strength: float = 0.0,
) -> nn.Linear:
    """Train a linear head full-batch on (x, y) with cross-entropy, on `device` (the same
    initialization on every device). `sample_weight`: each record's weight in the loss (the
    downstream step's joint head); `anchor`: start from these weights and add
    anchor_strength / 2 * ||w - anchor||^2 to the loss (a head pulled toward a global one).

    Args:
        x: the training embeddings (N, D).
        y: their labels (N,).
        n_classes: the number of classes (the head's outputs).
        cfg: learning rate, weight decay and epochs.
        seed: the head's initialization.
        device: where it trains.
        sample_weight: each record's weight in the loss (None: all 1).
        anchor: weights to start from and pull toward (None: a fresh head, no pull).
        anchor_strength: the pull toward `anchor`.
    """
    head = new_head(x.shape[1], n_classes, seed).to(device)
    if anchor is not None:
        head.load_state_dict(anchor)
        ref = [a.detach().to(device) for a in anchor.values()]
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.int64, device=device)
    wt = None
    if sample_weight is not None:
        wt = torch.as_tensor(sample_weight, dtype=torch.float32, device=device)
    opt = make_optimizer(cfg.optimizer, head.parameters(), cfg.lr, cfg.weight_decay)
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        if wt is None:
            loss = F.cross_entropy(head(xt), yt)
        else:
            loss = (F.cross_entropy(head(xt), yt, reduction="none") * wt).sum() / wt.sum()
        if anchor is not None and anchor_strength > 0:
            dist = sum(((p - a) ** 2).sum() for p, a in zip(head.parameters(), ref))
            loss = loss + 0.5 * anchor_strength * dist
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def predict_proba(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """Softmax class probabilities (float64 for exact mixing)."""
    if len(x) == 0:
        out = head.out_features if isinstance(head, nn.Linear) else 0
        return np.zeros((0, out))
    device = next(head.parameters()).device
    logits = head(torch.as_tensor(x, dtype=torch.float32, device=device))
    return torch.softmax(logits.double(), dim=1).cpu().numpy()
