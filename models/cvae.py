"""The paper's conditional VAE on embeddings (inputs squashed into (0, 1)).

Encoder [D + C -> H -> H -> H] with ReLU, then mu / logvar heads H -> L; decoder
[L + C -> H -> H -> H -> D] with ReLU and a sigmoid output. Defaults: H = 256, L = 100.
Only the decoder (keys starting with `decoder.`) is shared in federated training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_PREFIX = "decoder."


def mlp(sizes: list[int], final: nn.Module | None = None) -> nn.Sequential:
    """Linear layers with ReLU between them (and `final` after the last one)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class CVAE(nn.Module):
    """Conditional VAE: q(z | x, y) and p(x | z, y), labels given as one-hot vectors."""

    def __init__(
        self,
        input_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        latent_dim: int = 100,
        n_layers: int = 3,
    ):
        super().__init__()
        self.input_dim, self.n_classes, self.latent_dim = input_dim, n_classes, latent_dim
        hidden = [hidden_dim] * n_layers
        self.encoder = nn.Sequential(*mlp([input_dim + n_classes, *hidden]), nn.ReLU())
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = mlp([latent_dim + n_classes, *hidden, input_dim], final=nn.Sigmoid())

    def encode(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x, onehot], dim=1))
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, onehot], dim=1))

    def forward(
        self, x: torch.Tensor, onehot: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, mu and logvar; `eps` ~ N(0, I) is the reparameterization noise."""
        mu, logvar = self.encode(x, onehot)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, onehot), mu, logvar


def cvae_loss_per_sample(
    x: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    batch_size: int,
) -> torch.Tensor:
    """The paper's loss written per sample, so that DP can clip each sample's gradient.

    The paper minimizes MSE averaged over batch and dimensions plus beta x KL summed over the
    batch. Its batch mean of `mean_d (x - recon)^2 + beta * B * KL_i`, with B the nominal
    batch size, is exactly that loss, and it is what Opacus clipped per sample there."""
    mse = F.mse_loss(recon, x, reduction="none").mean(dim=1)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return mse + beta * batch_size * kl


def decoder_state(model: CVAE) -> dict[str, torch.Tensor]:
    """The shared part: the decoder's tensors, with their full key names."""
    return {
        f"{DECODER_PREFIX}{k}": v.detach().clone() for k, v in model.decoder.state_dict().items()
    }


def load_decoder(model: CVAE, state: dict[str, torch.Tensor]) -> None:
    """Load shared decoder tensors (full key names) into the model's decoder."""
    n = len(DECODER_PREFIX)
    model.decoder.load_state_dict(
        {k[n:]: v for k, v in state.items() if k.startswith(DECODER_PREFIX)}
    )
