"""The paper's conditional GAN on embeddings (inputs squashed into (0, 1)).

Generator [L + C -> 512 -> 1024 -> D] with LeakyReLU(0.2) and a sigmoid output; discriminator
[D + C -> 1024 -> 512 -> 1] with LeakyReLU(0.2) and a sigmoid. Only the generator is shared.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(sizes: list[int], final: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        layers.append(nn.LeakyReLU(0.2) if i < len(sizes) - 2 else final)
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(
        self,
        output_dim: int,
        n_classes: int,
        latent_dim: int = 100,
        hidden: tuple[int, int] = (512, 1024),
    ):
        super().__init__()
        self.latent_dim, self.n_classes = latent_dim, n_classes
        self.net = _mlp([latent_dim + n_classes, *hidden, output_dim], nn.Sigmoid())

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, onehot], dim=1))


class Discriminator(nn.Module):
    def __init__(self, input_dim: int, n_classes: int, hidden: tuple[int, int] = (1024, 512)):
        super().__init__()
        self.net = _mlp([input_dim + n_classes, *hidden, 1], nn.Sigmoid())

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Probability that each (x, y) is real, shape (N,)."""
        return self.net(torch.cat([x, onehot], dim=1)).squeeze(1)
