"""DP-SGD with noise shares under secure aggregation (`--secure_aggregation`): one full-batch
step per round. What a site does (`secure_dp_step`): clip each unit's gradient and sum (the
fast step's clipping), encode the shared parameters' sum as its residues with its Skellam share,
noise the parameters that stay local with the whole variance and step them with its optimizer.
What the coordinator does (`SecureServer.aggregate`): sum the residues modulo 2^30, decode,
divide by the sum of the released counts (the expected batch size) and step the shared
parameters with its own optimizer. With one step per round the shared update is linear in the
clipped sums, so the sum over sites is the accounted mechanism (algorithms/privacy/
secure_aggregation.py); several local steps would not be, and are refused (`check_schedule`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_sgd import PrivateTraining
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.ghost_clipping import clip_and_sum_linear
from algorithms.privacy.secure_aggregation import (
    SecurePlan,
    decode_sum,
    encode_share,
    noisy_local,
    plan_secure_sum,
    rotation_seed,
    split_parts,
    sum_shares,
)
from algorithms.privacy.skellam import gaussian_rdp
from utils.cli import flag_name

# The keys of a site's secure update: its residues, and the release (round) they belong to.
RESIDUES = "residues"
STEP = "secure_step"


def secure_update(residues: torch.Tensor, step: int) -> StateDict:
    """What a site sends of a secure release: its residues and the release's index."""
    return {RESIDUES: residues, STEP: torch.tensor([step], dtype=torch.int64)}


def update_step(update: ClientUpdate) -> int:
    """The release a secure update says it belongs to."""
    return int(update.weights[STEP].reshape(-1)[0])


def check_schedule(steps_per_round: int, what: str) -> None:
    """Refuse a schedule of other than one full-batch DP step per round under secure
    aggregation (one line; `steps_per_round` 0: not a whole-client batch)."""
    if steps_per_round != 1:
        takes = f"takes {steps_per_round} per round" if steps_per_round else "is not full-batch"
        raise ValueError(
            f"{flag_name(DPConfig, 'secure_aggregation')} needs one full-batch DP step per "
            f"round ({what} {takes}): "
            "the sum of several noisy local trajectories is not the "
            f"accounted mechanism (use {flag_name(GenerativeConfig, 'preset')} dp's schedule: a "
            "whole-client batch, one local epoch)"
        )


def count_rdp(count_noise: float) -> np.ndarray | None:
    """The RDP curve of the released count's Gaussian noise (None: the count is exact)."""
    return gaussian_rdp(count_noise) if count_noise > 0 else None


def secure_dp_step(
    *,
    state: PrivateTraining,
    loss_per_sample: torch.Tensor | None,
    groups: torch.Tensor | None,
    plan: SecurePlan,
    shared: Sequence[torch.nn.Parameter],
    step: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """One site's step: the clipped sum (per unit: `groups` as dp_step's), the shared
    parameters' part encoded with this site's share (returned: residues, int64), the other
    parameters noised locally with the whole variance, divided by the optimizer's expected
    batch size and stepped by the site's optimizer (the shared ones are not stepped here).

    Args:
        state: the client's private training (fast mode: its tape, optimizer, clipping norm).
        loss_per_sample: the batch's per-sample losses (None or empty: a noise-only step).
        groups: each sample's patient in the batch (None: per record).
        plan: the public plan of the secure releases.
        shared: the parameters summed across sites, in the coordinator's order.
        step: the release's index (the round): its rotation seeds.
        generator: the site's private noise generator (CPU).
    """
    opt = state.optimizer
    opt.zero_grad(set_to_none=True)
    if loss_per_sample is None or loss_per_sample.numel() == 0:
        if state.tape is not None:
            state.tape.records.clear()
        for p in opt.params:
            p.grad = torch.zeros_like(p)
    else:
        if state.tape is None:
            raise RuntimeError("secure aggregation clips with the fast mode's tape")
        clip_and_sum_linear(state.tape.take(), loss_per_sample, opt.max_grad_norm, groups)
    mine = {id(p) for p in shared}
    local = [p for p in opt.params if id(p) not in mine]
    flat = torch.cat([p.grad.detach().flatten().cpu() for p in (*shared, *local)])
    parts = split_parts(flat, plan)
    residues = encode_share(parts[0], plan, rotation_seed(plan, step, 0), generator)
    scale = opt.expected_batch_size * opt.accumulated_iterations
    if local:
        noisy = noisy_local(parts[1], plan, rotation_seed(plan, step, 1), generator) / scale
        for p, value in zip(local, noisy.split([p.numel() for p in local])):
            p.grad = value.view_as(p).to(p.dtype).to(p.device)
    for p in shared:
        p.grad = None  # stepped by the coordinator
    opt.original_optimizer.step()
    return residues


class SecureServer:
    """The coordinator's side: the shared weights (in the sites' order) and its optimizer over
    them; each round it decodes the sites' summed residues into the summed clipped gradient
    plus the noise, divides it by the summed released counts, and takes one optimizer step."""

    def __init__(
        self,
        weights: StateDict,
        plan: SecurePlan,
        optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        lr: Callable[[int], float] | None = None,
    ):
        """`weights`: the initial shared weights; `optimizer`: builds the coordinator's
        optimizer over them; `lr`: its learning rate at each round (None: fixed)."""
        self.plan, self.lr = plan, lr
        self.names = list(weights)
        self.params = [torch.nn.Parameter(weights[k].detach().clone().float()) for k in self.names]
        self.optimizer = optimizer(self.params)
        self.step = 0

    def weights(self) -> StateDict:
        """The current shared weights (copies)."""
        return {k: p.detach().clone() for k, p in zip(self.names, self.params)}

    def aggregate(self, updates: Sequence[ClientUpdate]) -> StateDict:
        """The server's step of a round (Rounds.aggregate): refuses updates of another round
        (a replay) or fewer sites than the plan's m."""
        steps = {update_step(u) for u in updates}
        if steps != {self.step}:
            raise ValueError(f"secure round {self.step + 1}: updates of steps {sorted(steps)}")
        total = sum_shares([u.weights[RESIDUES] for u in updates], self.plan)
        return self.step_from_total(total, [u.n_samples for u in updates])

    def step_from_total(self, total: torch.Tensor, counts: Sequence[int]) -> StateDict:
        """The server's step from the sites' modular sum (what secure aggregation reveals: the
        simulation's `sum_shares`, or SecAgg+'s unmasked sum under Flower) and their released
        counts; refused for fewer sites than the plan's m."""
        if len(counts) < self.plan.min_honest:
            raise ValueError(
                f"a secure sum of {len(counts)} sites: the plan needs at least "
                f"{self.plan.min_honest}"
            )
        grad = decode_sum(total, self.plan, rotation_seed(self.plan, self.step, 0))
        grad = grad / float(sum(counts))
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(self.step)
        for p, value in zip(self.params, grad.split([p.numel() for p in self.params])):
            p.grad = value.view_as(p).to(p.dtype)
        self.optimizer.step()
        self.step += 1
        return self.weights()


def secure_privacy(plan: SecurePlan, steps: int, delta: float, extra: np.ndarray | None) -> dict:
    """The fields of a site's privacy line under secure aggregation after `steps` releases:
    both epsilons, m, and the mechanism's scale (noise multiplier: the total noise's std over
    the L2 sensitivity on the grid)."""
    g = dataclasses.replace(plan, steps=steps).guarantees(delta, extra) if steps else None
    return {
        "mechanism": "skellam shares, secure aggregation",
        "accountant": "skellam-rdp",
        "min_honest_sites": plan.min_honest,
        "noise_multiplier": float(np.sqrt(plan.variance) / plan.l2),
        "grid_step": plan.gamma,
        "bits": plan.bits,
        "steps": steps,
        "epsilon": g.epsilon if g else 0.0,
        "epsilon_collusion": g.epsilon_collusion if g else 0.0,
    }


def dpsgd_plan(
    *, dp: DPConfig, shared: int, local: int, n_sites: int, steps: int, seed: int
) -> SecurePlan:
    """The plan of a DP-SGD method's secure releases: `shared` parameters summed, `local` ones
    kept (0: none), a unit's sensitivity the clipping norm, one release per round for `steps`
    rounds, composed with the released count's noise.

    Args:
        dp: the DP settings (clipping norm, target, m, count noise).
        shared: the parameters summed across sites.
        local: the parameters kept on the site (0: none).
        n_sites: the sites in a sum.
        steps: the releases (rounds).
        seed: the run seed (public: the rotations).
    """
    if dp.max_grad_norm is None:
        raise ValueError("secure DP-SGD needs a clipping norm")
    return plan_secure_sum(
        dims=(shared, local) if local else (shared,),
        sensitivity=dp.max_grad_norm,
        n_sites=n_sites,
        min_honest=dp.min_honest_sites,
        epsilon=dp.epsilon,
        delta=dp.delta,
        steps=steps,
        seed=seed,
        extra=count_rdp(dp.count_noise),
    )
