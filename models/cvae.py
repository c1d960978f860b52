"""The paper's conditional VAE on embeddings (inputs squashed into (0, 1)), and its losses.

Encoder [D + C -> H x n_layers] with ReLU, then mu / logvar heads -> L; decoder
[L + C -> H x n_layers -> D] with ReLU and a sigmoid output. The paper: H = 256, L = 100,
n_layers = 3. `n_layers = 0` gives linear maps (encoder [D + C -> L], decoder [L + C -> D]):
a class-conditional linear-Gaussian model, the small model of the DP preset.
Only the decoder (keys starting with `decoder.`) is shared in federated training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_PREFIX = "decoder."
CVAE_LOSSES = ("paper", "elbo")


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
    """Conditional VAE: q(z | x, y) and p(x | z, y), labels given as one-hot vectors.

    `encoder_scale` multiplies the embedding before the encoder sees it (a fixed,
    data-independent factor; 1 in the paper). Under DP-SGD every sample's whole gradient is
    clipped to one norm, and the encoder's first layer, whose gradient is the product of its
    output gradient and the D-dimensional input, takes nearly all of it; a small factor leaves
    the clipping norm to the decoder, the part that is shared."""

    def __init__(
        self,
        *,
        input_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        latent_dim: int = 100,
        n_layers: int = 3,
        encoder_scale: float = 1.0,
    ):
        """The networks' sizes.

        Args:
            input_dim: the embedding size D.
            n_classes: the number of classes.
            hidden_dim: the hidden layers' width.
            latent_dim: the size of z.
            n_layers: hidden layers of the encoder and of the decoder.
            encoder_scale: the factor applied to the embedding before the encoder.
        """
        super().__init__()
        self.input_dim, self.n_classes, self.latent_dim = input_dim, n_classes, latent_dim
        self.encoder_scale = encoder_scale
        hidden = [hidden_dim] * n_layers
        self.encoder: nn.Module
        if n_layers:
            self.encoder = nn.Sequential(*mlp([input_dim + n_classes, *hidden]), nn.ReLU())
        else:
            self.encoder = nn.Identity()
        width = hidden_dim if n_layers else input_dim + n_classes
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)
        self.decoder = mlp([latent_dim + n_classes, *hidden, input_dim], final=nn.Sigmoid())

    def encode(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder_scale != 1.0:
            x = x * self.encoder_scale
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


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z | x, y) || N(0, I)) of each sample, in nats."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def cvae_loss_per_sample(
    *,
    x: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    batch_size: int | torch.Tensor,
    loss: str = "paper",
    obs_std: float = 0.125,
) -> torch.Tensor:
    """The loss of each sample (DP clips each sample's gradient), over the last dimension (so
    that stacked clients, shape (K, B, D), work alike).

    `paper`: the paper's MSE averaged over batch and dimensions plus beta x KL summed over the
    batch, written per sample as `mean_d (x - recon)^2 + beta * B * KL_i` (B the nominal batch
    size): its batch mean is exactly the paper's loss, and Opacus clipped it per sample there.
    Its KL weight beta * B (25.6 at the paper's settings) against a reconstruction term of order
    0.01 makes the posterior collapse: the decoder learns to ignore z.
    `elbo`: the negative evidence lower bound of a Gaussian likelihood p(x | z, y) =
    N(recon, obs_std^2 I) in the model's space, `sum_d (x - recon)^2 / (2 obs_std^2) +
    beta * KL_i` (the constant D log(obs_std sqrt(2 pi)) left out); beta = 1 is the ELBO.

    Args:
        x: the inputs.
        recon: their reconstructions.
        mu: the posterior means.
        logvar: the posterior log variances.
        beta: the KL weight.
        batch_size: the nominal batch size B (per client when stacked: a tensor).
        loss: paper or elbo (CVAE_LOSSES).
        obs_std: the observation noise of the elbo loss.
    """
    kl = kl_per_sample(mu, logvar)
    if loss == "paper":
        return F.mse_loss(recon, x, reduction="none").mean(dim=-1) + beta * batch_size * kl
    if loss == "elbo":
        return (recon - x).pow(2).sum(dim=-1) / (2.0 * obs_std**2) + beta * kl
    raise ValueError(f"the CVAE loss must be one of {CVAE_LOSSES}, got {loss!r}")


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
