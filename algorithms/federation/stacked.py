"""K copies of one network as one stacked model: the simulated clients of a DP generative method
trained all at once (algorithms/federation/vectorized.py).

Each client's parameters are one row of a flat (K, P) tensor, in the order of the module's
`named_parameters()` (the order of its optimizer and of its DP noise draws); each parameter is a
view of its columns with a leading client dimension (a linear layer's weight is (K, out, in)).
Inputs are (K, B, features) and a linear layer is one batched matrix product (torch.baddbmm).
`forward` mirrors the nn.Sequential it was stacked from, layer by layer, and records each
linear layer's input and output for the per-sample clipping (`clip_and_sum_stacked`). Adam
runs elementwise on the flat tensor with one step counter per client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (weight name, bias name or None, the layer's input (detached), its output): one linear layer
# of a recorded forward pass
Record = tuple[str, str | None, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Where each parameter of a module lives in a row of the flat tensor: name -> (first
    column, shape), in `named_parameters()` order."""

    slots: dict[str, tuple[int, tuple[int, ...]]]
    size: int

    @staticmethod
    def of(module: nn.Module) -> Layout:
        slots, offset = {}, 0
        for name, p in module.named_parameters():
            slots[name] = (offset, tuple(p.shape))
            offset += p.numel()
        return Layout(slots, offset)

    def columns(self, names: Sequence[str]) -> slice:
        """The columns of consecutive parameters `names` (e.g. a CVAE's decoder)."""
        first, _ = self.slots[names[0]]
        last, shape = self.slots[names[-1]]
        return slice(first, last + math.prod(shape))

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter as a (K, *shape) view of the flat (K, P) tensor."""
        k = flat.shape[0]
        return {
            name: flat[:, start : start + math.prod(shape)].view(k, *shape)
            for name, (start, shape) in self.slots.items()
        }

    def row(self, flat: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Client k's parameters as views of its row."""
        return {
            name: flat[k, start : start + math.prod(shape)].view(shape)
            for name, (start, shape) in self.slots.items()
        }


def stack(modules: Sequence[nn.Module], device: torch.device) -> tuple[Layout, torch.Tensor]:
    """The modules' parameters (one module per client, all of one architecture) as one flat
    (K, P) leaf tensor that requires grad, and its layout."""
    layout = Layout.of(modules[0])
    rows = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in modules]
    return layout, torch.stack(rows).to(device).requires_grad_()


@torch.no_grad()
def unstack(layout: Layout, flat: torch.Tensor, k: int, module: nn.Module) -> None:
    """Copy client k's row back into its module's parameters."""
    row = layout.row(flat, k)
    for name, p in module.named_parameters():
        p.copy_(row[name])


def forward(
    module: nn.Module,
    name: str,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    tape: list[Record] | None = None,
) -> torch.Tensor:
    """`module` (as constructed: nn.Linear, ReLU, LeakyReLU, Sigmoid, Identity, or an
    nn.Sequential of them; `name` its prefix in `params`) applied to the stacked input x of shape
    (K, B, in) with the stacked parameters; linear layers are recorded on `tape`."""
    prefix = f"{name}." if name else ""
    if isinstance(module, nn.Sequential):
        for i, layer in enumerate(module):
            x = forward(layer, f"{prefix}{i}", params, x, tape)
        return x
    if isinstance(module, nn.Linear):
        weight, bias = params[f"{prefix}weight"], params.get(f"{prefix}bias")
        if bias is None:
            out = torch.bmm(x, weight.transpose(1, 2))
        else:
            out = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if tape is not None:
            bias_name = None if bias is None else f"{prefix}bias"
            tape.append((f"{prefix}weight", bias_name, x.detach(), out))
        return out
    if isinstance(module, nn.ReLU):
        return torch.relu(x)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(x, module.negative_slope)
    if isinstance(module, nn.Sigmoid):
        return torch.sigmoid(x)
    if isinstance(module, nn.Identity):
        return x
    raise ValueError(f"no stacked version of {type(module).__name__} (layer {name!r})")


def pad_rows(rows: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Tensors of shape (n_k, *rest) as one (K, length, *rest) tensor, zero-padded."""
    first = rows[0]
    out = first.new_zeros((len(rows), length, *first.shape[1:]))
    for k, r in enumerate(rows):
        if len(r):
            out[k, : len(r)] = r
    return out


class StackedAdam:
    """torch.optim.Adam (no weight decay, no amsgrad) on a flat (K, P) parameter tensor, with
    one step counter per client (clients take different numbers of steps). A client that is not
    `active` in a step keeps its parameters, moments and counter."""

    def __init__(
        self,
        flat: torch.Tensor,
        lr: float,
        betas: tuple[float, float],
        eps: float = 1e-8,
    ):
        self.flat, self.lr, self.betas, self.eps = flat, lr, betas, eps
        self.exp_avg = torch.zeros_like(flat, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(flat, requires_grad=False)
        self.steps = [0] * flat.shape[0]

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: Sequence[bool]) -> None:
        """One Adam step of every active client with its rows of `grad`, as torch's Adam."""
        beta1, beta2 = self.betas
        for k, on in enumerate(active):
            self.steps[k] += bool(on)
        done = [max(s, 1) for s in self.steps]  # a client without a step yet is not active
        device, dtype = self.flat.device, self.flat.dtype
        step_size = torch.tensor(
            [self.lr / (1 - beta1**s) for s in done], device=device, dtype=dtype
        )
        bias2_sqrt = torch.tensor(
            [math.sqrt(1 - beta2**s) for s in done], device=device, dtype=dtype
        )
        exp_avg = self.exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt[:, None]).add_(self.eps)
        new = self.flat - step_size[:, None] * exp_avg / denom
        if all(active):
            self.exp_avg, self.exp_avg_sq = exp_avg, exp_avg_sq
            self.flat.copy_(new)
            return
        mask = torch.tensor(list(active), device=self.flat.device)[:, None]
        self.exp_avg = torch.where(mask, exp_avg, self.exp_avg)
        self.exp_avg_sq = torch.where(mask, exp_avg_sq, self.exp_avg_sq)
        self.flat.copy_(torch.where(mask, new, self.flat))

    @torch.no_grad()
    def load(self, k: int, layout: Layout, optimizer: torch.optim.Optimizer, names) -> None:
        """Client k's Adam state from its torch optimizer (over the parameters `names` of the
        layout, in its order), e.g. restored from a checkpoint."""
        params = optimizer.param_groups[0]["params"]
        for name, p in zip(names, params):
            state = optimizer.state.get(p)
            if not state:
                continue
            start, shape = layout.slots[name]
            cols = slice(start, start + math.prod(shape))
            self.exp_avg[k, cols] = state["exp_avg"].flatten()
            self.exp_avg_sq[k, cols] = state["exp_avg_sq"].flatten()
            self.steps[k] = int(state["step"])

    @torch.no_grad()
    def save(self, k: int, layout: Layout, optimizer: torch.optim.Optimizer, names) -> None:
        """Client k's Adam state into its torch optimizer (the inverse of `load`)."""
        if self.steps[k] == 0:
            return
        params = optimizer.param_groups[0]["params"]
        for name, p in zip(names, params):
            start, shape = layout.slots[name]
            cols = slice(start, start + math.prod(shape))
            old = optimizer.state.get(p, {}).get("step")
            step = torch.tensor(
                float(self.steps[k]),
                dtype=torch.float32,
                device=old.device if old is not None else p.device,
            )
            optimizer.state[p] = {
                "step": step,
                "exp_avg": self.exp_avg[k, cols].view(shape).clone(),
                "exp_avg_sq": self.exp_avg_sq[k, cols].view(shape).clone(),
            }
