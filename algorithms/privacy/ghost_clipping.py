"""Per-sample gradient clipping of nn.Linear layers in one backward pass (the `fast` mode of
dp_sgd.py): each layer's per-sample gradient is g_i a_i^T, of norm |g_i| |a_i|, so
the clipped sum is one weighted matrix product per layer. The same clipped sum as Opacus's
per-sample `hooks` mode and its two-pass `ghost` mode (tested). `clip_and_sum_stacked` does the
same for K clients stacked along a leading dimension (the vectorized path)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from algorithms.federation.stacked import Layout, Record

# Opacus's clipping factor: min(1, C / (norm + CLIP_EPS)).
CLIP_EPS = 1e-6


class LinearTape:
    """Inputs and outputs of a model's nn.Linear layers, recorded during a private forward pass:
    all that the single-backward clipping (`clip_and_sum_linear`) needs."""

    def __init__(self, model: nn.Module):
        # the trained linear layers (frozen ones are passed through, as Opacus does)
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters())
        ]
        linear = {id(p) for m in self.layers for p in m.parameters()}
        others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in linear]
        partly = [m for m in self.layers if not all(p.requires_grad for p in m.parameters())]
        if others or partly:
            raise ValueError(
                "grad_sample_mode='fast' supports fully trained nn.Linear layers only, not "
                f"{others[:3] or partly[:1]}; use 'ghost'"
            )
        self.records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self.recording = False
        for layer in self.layers:
            layer.register_forward_hook(self._record)

    def _record(self, layer: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        if self.recording and torch.is_grad_enabled():
            self.records.append((layer, inputs[0].detach(), output))

    def take(self) -> list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]:
        """The records of the last forward pass (each layer exactly once), and forget them."""
        records, self.records = self.records, []
        seen = [id(r[0]) for r in records]
        if len(set(seen)) != len(seen) or len(seen) != len(self.layers):
            raise RuntimeError(
                f"expected one forward pass through each of {len(self.layers)} linear layers, "
                f"recorded {len(seen)} calls (a layer used twice or not at all?)"
            )
        return records


class Recorded(nn.Module):
    """The model as the private forward pass sees it: calls it with the tape recording."""

    def __init__(self, model: nn.Module, tape: LinearTape):
        super().__init__()
        self.model, self.tape = model, tape

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.tape.records.clear()  # a forward pass whose loss never reached dp_step
        self.tape.recording = True
        try:
            return self.model(*args, **kwargs)
        finally:
            self.tape.recording = False


def clip_and_sum_linear(
    records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]],
    loss_per_sample: torch.Tensor,
    max_grad_norm: float,
    groups: torch.Tensor | None = None,
) -> None:
    """Set each layer's `.grad` to the sum over samples of the per-sample gradients, each sample's
    whole gradient clipped to `max_grad_norm` as Opacus clips it; with `groups` (each sample's
    patient, 0..k-1 in the batch), each patient's summed gradient clipped instead.

    One backward pass to the layer outputs gives each sample's output gradient g_i; with input
    a_i, its weight gradient is g_i a_i^T, of squared norm |g_i|^2 |a_i|^2 (ghost norm), and the
    clipped sum is one weighted matrix product per layer. Opacus's ghost mode needs two full
    backward passes for the same sum. A patient's summed gradient sum_i g_i a_i^T has squared
    norm sum_{i,j} (g_i . g_j)(a_i . a_j) over its samples (`group_sq_norms`)."""
    grads = torch.autograd.grad(loss_per_sample.sum(), [r[2] for r in records])
    if any(a.dim() != 2 for _, a, _ in records):
        raise ValueError("grad_sample_mode='fast' needs 2-D inputs to linear layers")
    if groups is None:
        sq_norm = torch.zeros_like(loss_per_sample)
        for (layer, a, _), g in zip(records, grads):
            g2 = g.pow(2).sum(dim=1)
            sq_norm += g2 * a.pow(2).sum(dim=1)
            if layer.bias is not None:
                sq_norm += g2
        coef = (max_grad_norm / (sq_norm.sqrt() + CLIP_EPS)).clamp(max=1.0)
    else:
        layers = [(a, g, layer.bias is not None) for (layer, a, _), g in zip(records, grads)]
        sq_norm = group_sq_norms(layers, groups)
        coef = (max_grad_norm / (sq_norm.sqrt() + CLIP_EPS)).clamp(max=1.0)[groups]
    for (layer, a, _), g in zip(records, grads):
        scaled = g * coef.unsqueeze(1)
        layer.weight.grad = scaled.t() @ a
        if layer.bias is not None:
            layer.bias.grad = scaled.sum(dim=0)


def group_sq_norms(
    layers: list[tuple[torch.Tensor, torch.Tensor, bool]], groups: torch.Tensor
) -> torch.Tensor:
    """Squared norm of each group's summed gradient over all layers (a: inputs, g: output
    gradients, bias or not): sum over pairs i, j of one group of (g_i . g_j)(a_i . a_j + bias),
    the pairs' terms added into their group with an index_add (B x B per layer, no per-sample
    gradient is materialized)."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    same = groups.unsqueeze(0) == groups.unsqueeze(1)
    sq = torch.zeros(n_groups, dtype=layers[0][1].dtype, device=groups.device)
    for a, g, bias in layers:
        gram = (g @ g.t()) * (a @ a.t() + (1.0 if bias else 0.0))
        sq.index_add_(0, groups, (gram * same).sum(dim=1))
    return sq


def clip_and_sum_stacked(
    records: list[Record],
    loss_per_sample: torch.Tensor,
    max_grad_norm: float,
    layout: Layout,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """`clip_and_sum_linear` for K stacked clients (federation/stacked.py): `loss_per_sample`
    is (K, B), zero where a padded slot holds no sample (its gradient is then zero), and the
    records are the stacked linear layers of one forward pass. Each sample's whole gradient (all
    layers of its client's model) is clipped to `max_grad_norm` with the same ghost norm and
    coefficient; with `groups` (K, B: each sample's patient in its client's batch, 0..k-1; any
    group for a padded slot), each patient's summed gradient instead (`stacked_group_sq_norms`).
    Returns each client's clipped sum as a flat (K, P) tensor of `layout`."""
    names = [n for w, b, _, _ in records for n in (w, b) if n is not None]
    if sorted(names) != sorted(layout.slots):
        raise RuntimeError(
            f"expected one forward pass through every linear layer, recorded {names} "
            f"(parameters {list(layout.slots)})"
        )
    grads = torch.autograd.grad(loss_per_sample.sum(), [r[3] for r in records])
    if groups is None:
        sq_norm = torch.zeros_like(loss_per_sample)
        for (_, bias, a, _), g in zip(records, grads):
            g2 = g.pow(2).sum(dim=2)
            sq_norm += g2 * a.pow(2).sum(dim=2)
            if bias is not None:
                sq_norm += g2
        coef = (max_grad_norm / (sq_norm.sqrt() + CLIP_EPS)).clamp(max=1.0)
    else:
        layers = [(a, g, bias is not None) for (_, bias, a, _), g in zip(records, grads)]
        group_sq = stacked_group_sq_norms(layers, groups)
        coef = (max_grad_norm / (group_sq.sqrt() + CLIP_EPS)).clamp(max=1.0).gather(1, groups)
    out = loss_per_sample.new_zeros((loss_per_sample.shape[0], layout.size))
    views = layout.views(out)
    for (weight, bias, a, _), g in zip(records, grads):
        scaled = g * coef.unsqueeze(2)
        views[weight].copy_(torch.bmm(scaled.transpose(1, 2), a))
        if bias is not None:
            views[bias].copy_(scaled.sum(dim=1))
    return out


def stacked_group_sq_norms(
    layers: list[tuple[torch.Tensor, torch.Tensor, bool]], groups: torch.Tensor
) -> torch.Tensor:
    """`group_sq_norms` for K stacked clients: a (K, B, in) inputs, g (K, B, out) output
    gradients, groups (K, B); returns (K, G), each client's groups' squared norms (G: the most
    groups of any client; a client's unused groups are 0)."""
    n_groups = int(groups.max()) + 1 if groups.numel() else 0
    same = groups.unsqueeze(1) == groups.unsqueeze(2)
    sq = torch.zeros(groups.shape[0], n_groups, dtype=layers[0][1].dtype, device=groups.device)
    for a, g, bias in layers:
        gram = torch.bmm(g, g.transpose(1, 2)) * (torch.bmm(a, a.transpose(1, 2)) + float(bias))
        sq.scatter_add_(1, groups, (gram * same).sum(dim=2))
    return sq
