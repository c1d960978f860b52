"""Everything that depends on Opacus internals, in one place, tested bit for bit against Opacus
(tests/algorithms/privacy/test_opacus_compat.py): the version check, Opacus imported on first
use with its RDP terms memoized (a monkey-patch of
`opacus.accountants.analysis.rdp._compute_rdp`), Opacus's `_generate_noise` swapped for this
project's `noise` (its tail refined), and the fast DP steps that re-implement
`DPOptimizer.step` after clipping (one client, and K clients stacked)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from algorithms.federation.stacked import Layout
from algorithms.privacy.config import DPConfig
from algorithms.privacy.noise import dpsgd_noise
from utils.cli import flag_name

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer  # untyped package: Any to mypy

    from algorithms.privacy.dp_sgd import PrivateTraining

# Opacus's hooks see inputs that need no gradient (embeddings): a benign PyTorch notice.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

# The Opacus release this module is tested with: it uses Opacus internals (the memoized
# `_compute_rdp` below, `_check_skip_next_step` and the DP optimizer's fields in
# `noise_and_step`), so DP training refuses any other version (see `check_opacus`).
TESTED_OPACUS = "1.6.0"


def load_opacus() -> ModuleType:
    """Opacus, imported on first use: with it come SciPy's statistics and sympy, seconds of
    start-up that a process without DP-SGD (a FedAvg site's ClientApp) does not need.

    Every PRV epsilon bounds its domain with two RDP evaluations, in pure Python (holding the GIL
    that threads training other clients need); their per-order term is a pure function of (sample
    rate, noise multiplier, order), the same every round. Memoized here, the per-round PRV
    epsilon costs half as much, with identical values."""
    import opacus
    import opacus.accountants.utils
    from opacus.accountants.analysis import rdp

    if not hasattr(rdp._compute_rdp, "cache_info"):
        rdp._compute_rdp = functools.lru_cache(maxsize=65536)(rdp._compute_rdp)
    _route_opacus_noise()
    return opacus


def _route_opacus_noise() -> None:
    """Make Opacus's DP optimizers (the `ghost` and `hooks` modes) draw their noise with
    `noise` (Box-Muller with its tail refined), as the `fast` and vectorized paths do. Opacus's
    secure mode (never used here: `_check_supported`) and calls without a generator keep
    Opacus's own sampler."""
    import opacus.optimizers.optimizer as plain
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    original = getattr(plain._generate_noise, "opacus_original", plain._generate_noise)

    def generate(
        std: float,
        reference: torch.Tensor,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ) -> torch.Tensor:
        if secure_mode or generator is None or std == 0:
            return original(std, reference, generator=generator, secure_mode=secure_mode)
        return dpsgd_noise(std, reference.shape, generator, reference.dtype).to(reference.device)

    generate.opacus_original = original  # type: ignore[attr-defined]  # marks it as ours
    for module in (plain, ghost):
        if not hasattr(module._generate_noise, "opacus_original"):
            module._generate_noise = generate


def check_opacus() -> None:
    """Refuse DP training with an Opacus other than the tested one (ValueError saying both).
    Called before any output by the entry points' settings, and by `make_private`."""
    opacus = load_opacus()
    if opacus.__version__ != TESTED_OPACUS:
        raise ValueError(
            f"DP training needs opacus {TESTED_OPACUS}, the tested version (this code uses "
            f"Opacus internals), but {opacus.__version__} is installed: install "
            f"opacus=={TESTED_OPACUS}, or train without DP ({flag_name(DPConfig, 'enabled')} off)"
        )


def noise_and_step(opt: DPOptimizer) -> None:
    """What Opacus's ghost-mode `DPOptimizer.step()` does after clipping, on the clipped sums
    already in `.grad`, without its per-step copy of every gradient: the same noise draws (same
    call, generator and order), the same scaling, the accountant's hook, then the update. Equal
    to `opt.step()` bit for bit (tested); `opt.step()` stays for the reference modes."""
    _check_supported(opt)
    std = opt.noise_multiplier * opt.max_grad_norm
    for p in opt.params:
        if std > 0:
            p.grad.add_(dpsgd_noise(std, p.grad.shape, opt.generator, p.grad.dtype))
        p.grad /= opt.expected_batch_size * opt.accumulated_iterations
    opt._is_last_step_skipped = False
    if opt.step_hook:
        opt.step_hook(opt)
    opt.original_optimizer.step()


def _check_supported(opt: DPOptimizer) -> None:
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
    states: Sequence[PrivateTraining],
    grad: torch.Tensor,
    layout: Layout,
    active: Sequence[bool],
) -> None:
    """`noise_and_step` without the update, for K clients stacked in the vectorized path:
    `grad` (K, P) holds each client's clipped sum in `layout`'s columns (one row per client, as
    `states`). In place, for each `active` client: Gaussian noise from its own DP optimizer's
    generator with the same calls, shapes and order as that optimizer (so the same draws), the
    division by its expected batch size, and the step of its accountant. The update (Adam, one
    per client) is the caller's; inactive clients' rows are left to be ignored."""
    draws = torch.zeros_like(grad)
    scale = []
    for k, state in enumerate(states):
        opt = state.optimizer
        _check_supported(opt)
        scale.append(float(opt.expected_batch_size * opt.accumulated_iterations))
        std = opt.noise_multiplier * opt.max_grad_norm
        if not active[k]:
            continue
        if std > 0:
            row = draws[k]
            for start, shape in layout.slots.values():
                # the same draws as `dpsgd_noise(std, shape)` (shape-free), flattened
                size = math.prod(shape)
                row[start : start + size] = dpsgd_noise(std, (size,), opt.generator, row.dtype)
        if opt.step_hook:
            opt.step_hook(opt)
    grad.add_(draws).div_(torch.tensor(scale, device=grad.device, dtype=grad.dtype)[:, None])
