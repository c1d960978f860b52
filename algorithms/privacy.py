"""The privacy module: DP-SGD settings, noise calibration for the whole training, Opacus
wrapping, Poisson batches, one DP step, and the report of the epsilon actually spent.

Guarantee: record-level (epsilon, delta)-DP for each client, over everything the client's
DP-trained model releases during the run (every round's shared weights), under add/remove-one
adjacency, with Poisson sampling on every step. The noise multiplier is calibrated for the
total number of steps the client takes (rounds x local epochs x steps per epoch), so the spent
epsilon, read back from the accountant after training, never exceeds the target.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import opacus
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as _opacus_rdp
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from algorithms.ghost_clipping import LinearTape, Recorded, clip_and_sum_linear
from algorithms.stacked import Layout

# Opacus's hooks see inputs that need no gradient (embeddings): a benign PyTorch notice.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

# The Opacus release this module is tested with: it uses Opacus internals (the memoized
# `_compute_rdp` below, `_check_skip_next_step` and the DP optimizer's fields in
# `_noise_and_step`), so DP training refuses any other version (see `check_opacus`).
TESTED_OPACUS = "1.6.0"
ACCOUNTANTS = ("prv", "rdp")
CALIBRATIONS = ("total", "paper")
# The paper's code calibrates the noise for this many epochs, whatever the training length.
PAPER_CALIBRATION_EPOCHS = 20
# How per-sample gradients are clipped: `fast` (this module's single-backward ghost clipping of
# nn.Linear layers), or Opacus's own `ghost` (two backward passes) and `hooks` (per-sample
# gradients materialized). All three give the same clipped sum and feed the same DP optimizer.
GRAD_SAMPLE_MODES = ("fast", "ghost", "hooks")
# Accountant calls silence warnings (process-wide state) and share caches: clients trained in
# threads (run_federation's `workers`) take turns.
_ACCOUNTING = threading.Lock()
# Every PRV epsilon bounds its domain with two RDP evaluations, in pure Python (holding the GIL
# that threads training other clients need); their per-order term is a pure function of (sample
# rate, noise multiplier, order), the same every round. Memoized, the per-round PRV epsilon
# costs half as much, with identical values.
if not hasattr(_opacus_rdp._compute_rdp, "cache_info"):
    _opacus_rdp._compute_rdp = functools.lru_cache(maxsize=65536)(_opacus_rdp._compute_rdp)
# What DP does not cover in this project's protocol (also written into metrics.json).
NOT_COVERED = (
    "each client's number of training samples (sent in the clear as its FedAvg weight, and "
    "implied by its sampling rate and by the size of DP-CGAN's fake batches)",
    "the spent epsilon each client reports",
    "the end-of-run evaluation each client reports: validation accuracies for the lambda grid, "
    "test metrics, and fidelity statistics computed on its training embeddings",
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


def check_opacus() -> None:
    """Refuse DP training with an Opacus other than the tested one (ValueError saying both).
    Called before any output by the entry points' settings, and by `make_private`."""
    if opacus.__version__ != TESTED_OPACUS:
        raise ValueError(
            f"DP training needs opacus {TESTED_OPACUS}, the tested version (this code uses "
            f"Opacus internals), but {opacus.__version__} is installed: install "
            f"opacus=={TESTED_OPACUS}, or train without DP (--dp off)"
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
    with _ACCOUNTING:
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
    with _ACCOUNTING:
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
    the module to call for private forward passes, the DP optimizer, and the Poisson rate."""

    engine: PrivacyEngine
    module: nn.Module
    optimizer: torch.optim.Optimizer
    sample_rate: float
    noise_multiplier: float
    mode: str
    tape: LinearTape | None = field(default=None, repr=False)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far: the engine accountant's history, evaluated by that accountant."""
        acc = self.engine.accountant
        return epsilon_from_history(acc.mechanism(), acc.history, delta)

    def steps(self) -> int:
        return int(sum(h[2] for h in self.engine.accountant.history))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward/backward passes of the bare model that are not private steps (the CGAN
        generator's loss through the discriminator): Opacus's hooks off while inside."""
        if self.mode == "fast":
            yield
            return
        self.module.disable_hooks()
        try:
            yield
        finally:
            self.module.enable_hooks()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    cfg: DPConfig,
    noise_multiplier: float,
    noise_generator: torch.Generator,
    grad_sample_mode: str = "fast",
) -> PrivateTraining:
    """Wrap model and optimizer with one PrivacyEngine (per client, once per run).

    `fast` (default) and Opacus's `ghost` compute the same clipped per-sample update as
    Opacus's per-sample `hooks` mode without materializing per-sample gradients; `fast` uses
    Opacus's ghost-mode DP optimizer and accountant but clips in one backward pass instead of
    two (`clip_and_sum_linear`). Batches come from `poisson_batch` at the rate Opacus derives
    from the data loader (1 / ceil(n / batch_size))."""
    check_opacus()
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")
    tape = LinearTape(model) if grad_sample_mode == "fast" else None
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
        grad_sample_mode="ghost" if grad_sample_mode == "fast" else grad_sample_mode,
        noise_generator=noise_generator,
    )
    module, dp_optimizer = out[0], out[1]
    if tape is not None:
        # Keep Opacus's ghost-mode optimizer (noise, scaling, accountant hook) but none of its
        # per-layer hooks: the tape records what clip_and_sum_linear needs.
        module._close()
        module = Recorded(model, tape)
    rate = 1.0 / len(loader)
    if not math.isclose(rate, sample_rate_for(n, batch_size)):
        raise RuntimeError("sampling rate differs from Opacus's")
    return PrivateTraining(
        engine, module, dp_optimizer, rate, noise_multiplier, grad_sample_mode, tape
    )


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each record independently with `sample_rate`
    (as Opacus's UniformWithReplacementSampler draws them)."""
    return torch.nonzero(poisson_mask(n, sample_rate, generator)).flatten()


def poisson_mask(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Which of n records one Poisson-sampled batch holds (a boolean mask; on the generator's
    device): the draw of `poisson_batch`."""
    return torch.rand(n, generator=generator, device=generator.device) < sample_rate


def dp_step(private: PrivateTraining, loss_per_sample: torch.Tensor | None) -> None:
    """One DP-SGD step: clip each sample's gradient of its loss, sum, add Gaussian noise,
    divide by the expected batch size, update, and count the step in the accountant.

    An empty Poisson batch (`loss_per_sample` None or empty) still takes a noise-only step: the
    accountant counts every step, so the released model must too."""
    opt = private.optimizer
    opt.zero_grad(set_to_none=True)
    if loss_per_sample is None or loss_per_sample.numel() == 0:
        if private.tape is not None:
            private.tape.records.clear()
        for p in opt.params:
            p.grad = torch.zeros_like(p)
            if private.mode == "hooks":
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    elif private.mode == "fast":
        clip_and_sum_linear(private.tape.take(), loss_per_sample, opt.max_grad_norm)
        _noise_and_step(opt)
        return
    elif private.mode == "ghost":
        DPTensorFastGradientClipping(private.module, opt, loss_per_sample, "mean").backward()
    else:
        loss_per_sample.mean().backward()
    opt.step()


def _noise_and_step(opt: torch.optim.Optimizer) -> None:
    """What Opacus's ghost-mode `DPOptimizer.step()` does after clipping, on the clipped sums
    already in `.grad`, without its per-step copy of every gradient: the same noise draws (same
    call, generator and order), the same scaling, the accountant's hook, then the update. Equal
    to `opt.step()` bit for bit (tested); `opt.step()` stays for the reference modes."""
    _check_supported(opt)
    std = opt.noise_multiplier * opt.max_grad_norm
    for p in opt.params:
        if std > 0:
            p.grad.add_(noise(std, p.grad.shape, opt.generator))
        p.grad /= opt.expected_batch_size * opt.accumulated_iterations
    opt._is_last_step_skipped = False
    if opt.step_hook:
        opt.step_hook(opt)
    opt.original_optimizer.step()


def _check_supported(opt: torch.optim.Optimizer) -> None:
    """The fast DP steps re-implement the plain DPOptimizer step only."""
    if (
        opt.secure_mode
        or opt._check_skip_next_step()
        or getattr(opt, "_adjusted_noise_multiplier", None) is not None
        or opt.loss_reduction != "mean"
    ):
        raise RuntimeError(
            "secure mode, virtual steps, adaptive clipping and sum reduction are not supported"
        )


def noise_and_account_stacked(
    privates: Sequence[PrivateTraining],
    grad: torch.Tensor,
    layout: Layout,
    active: Sequence[bool],
) -> None:
    """`_noise_and_step` without the update, for K clients stacked in the vectorized path:
    `grad` (K, P) holds each client's clipped sum in `layout`'s columns (one row per client, as
    `privates`). In place, for each `active` client: Gaussian noise from its own DP optimizer's
    generator with the same calls, shapes and order as that optimizer (so the same draws), the
    division by its expected batch size, and the step of its accountant. The update (Adam, one
    per client) is the caller's; inactive clients' rows are left to be ignored."""
    draws = torch.zeros_like(grad)
    scale = []
    for k, private in enumerate(privates):
        opt = private.optimizer
        _check_supported(opt)
        scale.append(float(opt.expected_batch_size * opt.accumulated_iterations))
        std = opt.noise_multiplier * opt.max_grad_norm
        if not active[k]:
            continue
        if std > 0:
            row = draws[k]
            for start, shape in layout.slots.values():
                # Tensor.normal_ on a contiguous slice draws what torch.normal(size=shape) does
                row[start : start + math.prod(shape)].normal_(0, std, generator=opt.generator)
        if opt.step_hook:
            opt.step_hook(opt)
    grad.add_(draws).div_(torch.tensor(scale, device=grad.device, dtype=grad.dtype)[:, None])


def noise(std: float, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """One Gaussian noise draw of DP-SGD, as Opacus's DPOptimizer draws it (on the generator's
    device: a CUDA generator draws on the GPU)."""
    return torch.normal(mean=0, std=std, size=shape, generator=generator, device=generator.device)


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


def delta_warning(cfg: DPConfig | None, sizes: list[int], ids: list[int]) -> str | None:
    """A warning when delta is not below 1/n for some client (the usual requirement of DP):
    `sizes` and `ids` are the clients' training sizes and ids. None when all is well."""
    if cfg is None or not cfg.enabled:
        return None
    small = [i for i, n in zip(ids, sizes) if cfg.delta >= 1.0 / max(n, 1)]
    if not small:
        return None
    return (
        f"--delta {cfg.delta} is not below 1/n for clients {small} "
        f"(n = their training size); the guarantee is weak for them"
    )


def over_budget_warning(report: dict) -> str | None:
    """A warning when a run's spent epsilon exceeds its target (only --dp_calibration paper),
    from its `privacy` block. None when all is well."""
    if not report.get("enabled"):
        return None
    spent, target = report["epsilon_max"], report["target_epsilon"]
    if spent <= target + 1e-9:
        return None
    return (
        f"the spent epsilon ({spent:.3f}, largest over clients, from the accountant) exceeds "
        f"the target {target} (--dp_calibration {report['calibration']}); this run is NOT "
        f"{target}-DP"
    )
