"""One DP-SGD step: a model and its optimizer made private once per run (`make_private`, with
Opacus's engine and accountant), Poisson batches, and the step itself (`dp_step`): clip each
sample's gradient, sum, add Gaussian noise, update, account."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from algorithms.privacy.accounting import epsilon_from_history, sample_rate_for
from algorithms.privacy.config import DPConfig
from algorithms.privacy.ghost_clipping import LinearTape, Recorded, clip_and_sum_linear
from algorithms.privacy.opacus_compat import check_opacus, load_opacus, noise_and_step

if TYPE_CHECKING:  # untyped package: Any to mypy
    import opacus
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

# How per-sample gradients are clipped: `fast` (ghost_clipping.py's single backward pass for
# nn.Linear layers), or Opacus's own `ghost` (two backward passes) and `hooks` (per-sample
# gradients materialized). All three give the same clipped sum and feed the same DP optimizer.
GRAD_SAMPLE_MODES = ("fast", "ghost", "hooks")


@dataclass
class PrivateTraining:
    """A model made private once for the whole run: the Opacus engine (and its accountant),
    the module to call for private forward passes, the DP optimizer, and the Poisson rate."""

    engine: opacus.PrivacyEngine
    module: GradSampleModule  # Opacus's wrapper of the model (the `fast` mode: `Recorded`)
    optimizer: DPOptimizer
    sample_rate: float
    noise_multiplier: float
    mode: str
    tape: LinearTape | None = field(default=None, repr=False)
    count_steps: int = 0  # the accountant's first entries that are the count's release

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far: the engine accountant's history, evaluated by that accountant."""
        acc = self.engine.accountant
        return epsilon_from_history(acc.mechanism(), acc.history, delta)

    def steps(self) -> int:
        """DP-SGD steps taken (the count's release is not a step)."""
        return int(sum(h[2] for h in self.engine.accountant.history)) - self.count_steps

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
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    cfg: DPConfig,
    noise_multiplier: float,
    noise_generator: torch.Generator,
    grad_sample_mode: str = "fast",
    count_history: tuple[tuple[float, float, int], ...] = (),
) -> PrivateTraining:
    """Wrap model and optimizer with one PrivacyEngine (per client, once per run).

    `fast` (default) and Opacus's `ghost` compute the same clipped per-sample update as
    Opacus's per-sample `hooks` mode without materializing per-sample gradients; `fast` uses
    Opacus's ghost-mode DP optimizer and accountant but clips in one backward pass instead of
    two (`clip_and_sum_linear`). Batches come from `poisson_batch` at the rate Opacus derives
    from the data loader (1 / ceil(n / batch_size)); `n` is the released (noisy) count, and
    `count_history` (its release) starts the accountant's history.

    Args:
        model: the model to train privately.
        optimizer: its optimizer (wrapped into Opacus's DP optimizer).
        n: the released (noisy) record count.
        batch_size: the nominal batch size (the Poisson rate is 1 / ceil(n / batch_size)).
        cfg: the DP settings (clipping norm, accountant).
        noise_multiplier: the calibrated noise multiplier.
        noise_generator: the client's private noise generator.
        grad_sample_mode: fast, ghost or hooks (GRAD_SAMPLE_MODES).
        count_history: the accountant's entries of the count's release.
    """
    check_opacus()
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}")
    tape = LinearTape(model) if grad_sample_mode == "fast" else None
    with warnings.catch_warnings():
        # Opacus's "Secure RNG turned off": our noise source is chosen and recorded by us
        # (DPConfig.noise_source, privacy.noise_source in metrics.json), and a secure source
        # is a generator keyed by OS entropy (utils.seeding.private_generator).
        warnings.simplefilter("ignore")
        engine = load_opacus().PrivacyEngine(accountant=cfg.accountant)
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
    engine.accountant.history = list(count_history)
    if tape is not None:
        # Keep Opacus's ghost-mode optimizer (noise, scaling, accountant hook) but none of its
        # per-layer hooks: the tape records what clip_and_sum_linear needs.
        module._close()
        module = Recorded(model, tape)
    rate = 1.0 / len(loader)
    if not math.isclose(rate, sample_rate_for(n, batch_size)):
        raise RuntimeError("sampling rate differs from Opacus's")
    return PrivateTraining(
        engine,
        module,
        dp_optimizer,
        rate,
        noise_multiplier,
        grad_sample_mode,
        tape,
        len(count_history),
    )


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each record independently with `sample_rate`
    (as Opacus's UniformWithReplacementSampler draws them)."""
    return torch.nonzero(poisson_mask(n, sample_rate, generator)).flatten()


def poisson_mask(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Which of n records one Poisson-sampled batch holds (a boolean mask; on the generator's
    device): the draw of `poisson_batch`."""
    return torch.rand(n, generator=generator, device=generator.device) < sample_rate


def patient_poisson_batch(
    patients: torch.Tensor, n_patients: int, sample_rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of user-level DP-SGD: Poisson sampling over patients (each independently with
    `sample_rate`, so q is per patient), each sampled patient with all its records. `patients`:
    each record's patient, 0..n_patients-1. Returns the records' indices and each one's group
    (its patient numbered 0..k-1 within the batch), for `dp_step`'s per-patient clipping."""
    chosen = poisson_mask(n_patients, sample_rate, generator)
    index = torch.nonzero(chosen[patients]).flatten()
    groups = torch.unique(patients[index], return_inverse=True)[1]
    return index, groups


def dp_step(
    state: PrivateTraining,
    loss_per_sample: torch.Tensor | None,
    groups: torch.Tensor | None = None,
) -> None:
    """One DP-SGD step: clip each sample's gradient of its loss (with `groups`, each patient's
    summed gradient: user-level DP-SGD, `fast` mode only), sum, add Gaussian noise, divide by
    the expected batch size, update, and count the step in the accountant.

    An empty Poisson batch (`loss_per_sample` None or empty) still takes a noise-only step: the
    accountant counts every step, so the released model must too."""
    if groups is not None and state.mode != "fast":
        raise ValueError("per-patient clipping needs grad_sample_mode='fast'")
    opt = state.optimizer
    opt.zero_grad(set_to_none=True)
    if loss_per_sample is None or loss_per_sample.numel() == 0:
        if state.tape is not None:
            state.tape.records.clear()
        for p in opt.params:
            p.grad = torch.zeros_like(p)
            if state.mode == "hooks":
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    elif state.mode == "fast":
        if state.tape is None:
            raise RuntimeError("the fast mode records its linear layers on a tape (make_private)")
        clip_and_sum_linear(state.tape.take(), loss_per_sample, opt.max_grad_norm, groups)
        noise_and_step(opt)
        return
    elif state.mode == "ghost":
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        DPTensorFastGradientClipping(state.module, opt, loss_per_sample, "mean").backward()
    else:
        loss_per_sample.mean().backward()
    opt.step()
