"""FedAvg and FedProx on a linear head over embeddings (the paper's FL baselines).

FedProx is FedAvg plus the proximal term `mu/2 * ||w - w_global||^2` in each client's loss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.evaluation.heads import make_optimizer, new_head, predict_proba
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from data.clients import ClientData
from utils.cli import flag, flag_name
from utils.seeding import FEDAVG_CLIENT, FEDAVG_GLOBAL, derive_seed, generator


@dataclass(frozen=True)
class FedAvgConfig:
    """Paper defaults: 50 rounds x 5 local epochs, SGD lr 1e-3, batch 128, LR x0.1 at 50% and
    75% of the rounds, every client every round."""

    n_rounds: int = field(
        default=50,
        metadata=flag(
            "--n_rounds", section="fedavg", help="communication rounds. Default: {default}"
        ),
    )
    # local epochs per round (--fedavg_local_epochs); the field keeps the paper's name, which
    # config.json records and which names the run directories
    local_steps: int = field(
        default=5,
        metadata=flag(
            "--fedavg_local_epochs",
            "--local_steps",
            section="fedavg",
            help="local epochs per round (--local_steps is the paper's name: it counts epochs, "
            "not steps). Default: {default}",
        ),
    )
    batch_size: int = field(
        default=128,
        metadata=flag("--bz", section="fedavg", help="local minibatch size. Default: {default}"),
    )
    lr: float = field(
        default=1e-3,
        metadata=flag(
            "--fedavg_lr", section="fedavg", help="client learning rate. Default: {default}"
        ),
    )
    optimizer: str = field(
        default="sgd",
        metadata=flag(
            "--optimizer",
            section="fedavg",
            choices=["sgd", "adam"],
            help="client optimizer. Default: {default}",
        ),
    )
    lr_scheduler: str = field(
        default="multi_step",
        metadata=flag(
            "--lr_scheduler",
            section="fedavg",
            choices=["multi_step", "none"],
            help="multi_step: x0.1 at 50%% and 75%% of the rounds. Default: {default}",
        ),
    )
    # FedProx's proximal weight: the flag's default is 0.05, plain FedAvg has none
    mu: float = field(
        default=0.0,
        metadata=flag(
            "--mu",
            section="fedprox",
            default=0.05,
            unused=0.0,
            help="FedProx proximal weight: the term mu/2 * ||w - w_global||^2. Default: {default}",
        ),
    )
    sampling_rate: float = field(
        default=1.0,
        metadata=flag(
            "--sampling_rate",
            section="fedavg",
            help="fraction of clients taking part in each round. Default: {default}",
        ),
    )

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        checks = [
            (self.n_rounds >= 1, f"{name('n_rounds')} must be >= 1, got {self.n_rounds}"),
            (self.local_steps >= 1, f"{name('local_steps')} must be >= 1, got {self.local_steps}"),
            (self.batch_size >= 1, f"{name('batch_size')} must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"{name('lr')} must be > 0, got {self.lr}"),
            (
                self.optimizer in ("sgd", "adam"),
                f"{name('optimizer')} must be sgd or adam, got {self.optimizer!r}",
            ),
            (
                self.lr_scheduler in ("multi_step", "none"),
                f"{name('lr_scheduler')} must be multi_step or none, got {self.lr_scheduler!r}",
            ),
            (self.mu >= 0, f"{name('mu')} must be >= 0, got {self.mu}"),
            (
                0 < self.sampling_rate <= 1,
                f"{name('sampling_rate')} must lie in (0, 1], got {self.sampling_rate}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def lr_at(cfg: FedAvgConfig, rnd: int) -> float:
    """Learning rate of round `rnd` (0-based): x0.1 from 50% and again from 75% of the rounds."""
    if cfg.lr_scheduler == "none":
        return cfg.lr
    milestones = (cfg.n_rounds // 2, (3 * cfg.n_rounds) // 4)
    return cfg.lr * 0.1 ** sum(rnd >= m for m in milestones)


def seeded_global_head(dim: int, n_classes: int, seed: int) -> StateDict:
    """The server's initial head, seeded by the run seed."""
    return {k: v.detach().clone() for k, v in new_head(dim, n_classes, seed).state_dict().items()}


def initial_head(dim: int, n_classes: int, run_seed: int) -> StateDict:
    """The initial global head of a run, seeded by the run seed's FedAvg stream."""
    return seeded_global_head(dim, n_classes, derive_seed(run_seed, FEDAVG_GLOBAL))


class FedAvgClient:
    """One client of FedAvg/FedProx: its data, its shuffling RNG and its optimizer state."""

    def __init__(
        self, data: ClientData, n_classes: int, cfg: FedAvgConfig, seed: int, device: str = "cpu"
    ):
        self.data = data
        self.cfg = cfg
        self.device = torch.device(device)
        self.x = torch.as_tensor(data.x_train, dtype=torch.float32, device=self.device)
        self.y = torch.as_tensor(data.y_train, dtype=torch.int64, device=self.device)
        self.head = new_head(self.x.shape[1], n_classes, seed).to(self.device)
        self.optimizer = make_optimizer(cfg.optimizer, self.head.parameters(), cfg.lr)
        self.rng = generator(seed, self.device)

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs of minibatch training from the global head; returns the new head."""
        self.head.load_state_dict(global_weights)
        anchor = [p.detach().clone() for p in self.head.parameters()] if self.cfg.mu > 0 else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.cfg, rnd)
        n = len(self.y)
        total, seen = 0.0, 0
        for _ in range(self.cfg.local_steps):
            order = torch.randperm(n, generator=self.rng, device=self.device)
            for start in range(0, n, self.cfg.batch_size):
                idx = order[start : start + self.cfg.batch_size]
                loss = F.cross_entropy(self.head(self.x[idx]), self.y[idx])
                total += loss.item() * len(idx)
                seen += len(idx)
                if anchor is not None:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(self.head.parameters(), anchor))
                    loss = loss + 0.5 * self.cfg.mu * prox
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        weights = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return ClientUpdate(weights, n, {"train_loss": total / max(seen, 1)})

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue this client exactly: live tensors, not copies
        (serialize it before training goes on)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])


def make_fedavg_clients(
    clients: list[ClientData], n_classes: int, cfg: FedAvgConfig, seed: int, device: str = "cpu"
) -> list[FedAvgClient]:
    """One FedAvg client per data set, seeded by the run seed and the client id."""
    return [
        FedAvgClient(c, n_classes, cfg, derive_seed(seed, FEDAVG_CLIENT, c.id), device)
        for c in clients
    ]


def val_accuracy(head: torch.nn.Module, c: ClientData) -> float | None:
    """A head's accuracy on one client's validation set (None without validation data)."""
    if not len(c.y_val):
        return None
    return float((predict_proba(head, c.x_val).argmax(1) == c.y_val).mean())


def validation_row(cfg: FedAvgConfig, rnd: int, accs: list[float | None]) -> dict:
    """History columns of a FedAvg round: its learning rate and the global head's validation
    accuracy averaged over the clients that have validation data."""
    known = [a for a in accs if a is not None]
    return {"lr": lr_at(cfg, rnd), "val_acc": float(np.mean(known)) if known else float("nan")}
