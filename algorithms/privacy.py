"""The privacy module: DP-SGD settings, noise calibration for the whole training, Opacus
wrapping, Poisson batches, one DP step, and the report of the epsilon actually spent.

Guarantee: record-level (epsilon, delta)-DP for each client, over everything the client's
DP-trained model releases during the run (every round's shared weights), under add/remove-one
adjacency, with Poisson sampling on every step. The noise multiplier is calibrated for the
total number of steps the client takes (rounds x local epochs x steps per epoch), so the spent
epsilon, read back from the accountant after training, never exceeds the target.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# Opacus's hooks see inputs that need no gradient (embeddings): a benign PyTorch notice.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

ACCOUNTANTS = ("prv", "rdp")
CALIBRATIONS = ("total", "paper")
# The paper's code calibrates the noise for this many epochs, whatever the training length.
PAPER_CALIBRATION_EPOCHS = 20
# What DP does not cover in this project's protocol (also written into metrics.json).
NOT_COVERED = (
    "each client's number of training samples (sent in the clear as its FedAvg weight, and "
    "implied by its sampling rate)",
    "the spent epsilon each client reports",
    "the choice of hyper-parameters and of the backbone",
)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. Defaults are the paper's: epsilon 1, delta 1e-4, clipping norm 1.5.

    The accountant defaults to PRV (Gopi et al., 2021; Opacus's default): it computes a
    numerically tight upper bound on epsilon, so the same guarantee needs less noise than the
    looser analytic RDP bound (about 8% less on the paper's workload)."""

    enabled: bool = True
    epsilon: float = 1.0
    delta: float = 1e-4
    max_grad_norm: float = 1.5
    accountant: str = "prv"
    calibration: str = "total"

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"--epsilon must be a positive number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"--delta must lie in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"--max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"--accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"--dp_calibration must be one of {CALIBRATIONS}, got {self.calibration!r}"
            )


def sample_rate_for(n: int, batch_size: int) -> float:
    """Opacus's Poisson rate for a dataset of n with nominal batch size B: 1 / ceil(n / B)."""
    return 1.0 / math.ceil(n / batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """DP steps in one epoch (Opacus: 1 / sample rate)."""
    return math.ceil(n / batch_size)


def calibrate_noise(cfg: DPConfig, sample_rate: float, total_steps: int, steps_epoch: int) -> float:
    """Noise multiplier for the target (epsilon, delta). `total` calibrates for every step the
    client will take; `paper` reproduces the paper's code (20 epochs, whatever the training)."""
    steps = total_steps if cfg.calibration == "total" else PAPER_CALIBRATION_EPOCHS * steps_epoch
    return _noise_multiplier(cfg.epsilon, cfg.delta, sample_rate, steps, cfg.accountant)


@functools.lru_cache(maxsize=1024)
def _noise_multiplier(
    epsilon: float, delta: float, rate: float, steps: int, accountant: str
) -> float:
    """Opacus's binary search (cached: clients of equal size share the same answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV's "optimal order" chatter
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.01,
            )
        )


def epsilon_from_history(
    accountant: str, history: list[tuple[float, float, int]], delta: float
) -> float:
    """Epsilon of a sequence of (noise multiplier, sample rate, steps), from a new accountant."""
    return _epsilon(accountant, tuple(tuple(h) for h in history), delta)


@functools.lru_cache(maxsize=4096)
def _epsilon(accountant: str, history: tuple, delta: float) -> float:
    """Cached: the same history (e.g. clients of equal size, or a rerun) is computed once."""
    if not history:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivateTraining:
    """A model made private once for the whole run: the Opacus engine (and its accountant),
    the wrapped module and optimizer, and the Poisson sampling rate."""

    engine: PrivacyEngine
    module: nn.Module
    optimizer: torch.optim.Optimizer
    sample_rate: float
    noise_multiplier: float
    ghost: bool

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far: the engine accountant's history, evaluated by that accountant."""
        acc = self.engine.accountant
        return epsilon_from_history(acc.mechanism(), acc.history, delta)

    def steps(self) -> int:
        return int(sum(h[2] for h in self.engine.accountant.history))


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    cfg: DPConfig,
    noise_multiplier: float,
    noise_generator: torch.Generator,
    grad_sample_mode: str = "ghost",
) -> PrivateTraining:
    """Wrap model and optimizer with one PrivacyEngine (per client, once per run).

    Ghost clipping computes the same clipped per-sample update as Opacus's per-sample `hooks`
    mode without materializing per-sample gradients. Batches come from `poisson_batch` at the
    rate Opacus derives from the data loader (1 / ceil(n / batch_size))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off"
        engine = PrivacyEngine(accountant=cfg.accountant)
    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch_size)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        criterion=nn.MSELoss(),  # unused: per-sample losses are wrapped in dp_backward
        noise_multiplier=noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_generator,
    )
    module, dp_optimizer = out[0], out[1]
    rate = 1.0 / len(loader)
    if not math.isclose(rate, sample_rate_for(n, batch_size)):
        raise RuntimeError("sampling rate differs from Opacus's")
    return PrivateTraining(
        engine, module, dp_optimizer, rate, noise_multiplier, ghost=grad_sample_mode == "ghost"
    )


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each record independently with `sample_rate`
    (as Opacus's UniformWithReplacementSampler draws them)."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


def dp_step(private: PrivateTraining, loss_per_sample: torch.Tensor | None) -> None:
    """One DP-SGD step: clip each sample's gradient of its loss, sum, add Gaussian noise,
    divide by the expected batch size, update, and count the step in the accountant.

    An empty Poisson batch (`loss_per_sample` None or empty) still takes a noise-only step: the
    accountant counts every step, so the released model must too."""
    opt = private.optimizer
    opt.zero_grad(set_to_none=True)
    if loss_per_sample is None or loss_per_sample.numel() == 0:
        for p in opt.params:
            p.grad = torch.zeros_like(p)
            if not private.ghost:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
    elif private.ghost:
        DPTensorFastGradientClipping(private.module, opt, loss_per_sample, "mean").backward()
    else:
        loss_per_sample.mean().backward()
    opt.step()


def privacy_report(cfg: DPConfig, clients: list[dict]) -> dict:
    """The `privacy` block of metrics.json. `clients`: id, sample_rate, steps, noise_multiplier,
    epsilon (spent, from the accountant)."""
    if not cfg.enabled:
        return {
            "enabled": False,
            "accountant": None,
            "target_epsilon": None,
            "delta": None,
            "max_grad_norm": None,
            "noise_multiplier": None,
            "calibration": None,
            "clients": [{"id": c["id"], "epsilon": None} for c in clients],
            "epsilon_max": None,
            "not_covered": ["DP is disabled: nothing is private"],
        }
    sigmas = {round(c["noise_multiplier"], 12) for c in clients}
    return {
        "enabled": True,
        "accountant": cfg.accountant,
        "target_epsilon": cfg.epsilon,
        "delta": cfg.delta,
        "max_grad_norm": cfg.max_grad_norm,
        # one value when every client uses the same; per-client values are in "clients"
        "noise_multiplier": sigmas.pop() if len(sigmas) == 1 else None,
        "calibration": cfg.calibration,
        "clients": clients,
        "epsilon_max": max(c["epsilon"] for c in clients),
        "not_covered": list(NOT_COVERED),
    }
