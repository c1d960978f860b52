"""DP-CVAE (the paper's method): each client trains a conditional VAE with DP-SGD on encoder
and decoder; only the decoder leaves the client, and the server averages the decoders.

The rounds, the synthesis and the lambda protocol are shared with DP-CGAN (generative.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from algorithms.privacy.dp_client import DPClient, adam
from algorithms.privacy.dp_sgd import dp_step
from algorithms.privacy.generative_config import GenerativeConfig
from models.cvae import CVAE, cvae_loss_per_sample, decoder_state, load_decoder
from utils.seeding import INIT, derive_seed, seeded


def new_cvae(dim: int, n_classes: int, cfg: GenerativeConfig) -> CVAE:
    """The CVAE of these settings (unseeded: call it under `seeded`)."""
    return CVAE(
        input_dim=dim,
        n_classes=n_classes,
        hidden_dim=cfg.hidden_dim,
        latent_dim=cfg.latent_dim,
        n_layers=cfg.cvae_layers,
        encoder_scale=cfg.encoder_scale,
    )


class CVAEClient(DPClient):
    """A DP-CVAE client: encoder and decoder trained with DP-SGD; only the decoder is sent.
    Under secure aggregation it sends its share of the decoder's noisy clipped-gradient sum
    instead, and steps its encoder alone (dp_client._secure_round)."""

    secure = True

    def _build(self, seed: int) -> None:
        """The CVAE, its Adam optimizer, made private (the client seed's INIT stream)."""
        dim, n_classes, cfg = self.x.shape[1], self.n_classes, self.cfg
        model = seeded(derive_seed(seed, INIT), lambda: new_cvae(dim, n_classes, cfg))
        self.model = model.to(self.device)
        self.optimizer = adam(self.model.parameters(), lr=cfg.cvae_learning_rate)
        self._make_private(self.model, self.optimizer)

    @staticmethod
    def initial_weights(dim: int, n_classes: int, cfg: GenerativeConfig, seed: int) -> StateDict:
        """The server's initial decoder, seeded by `seed`."""
        return decoder_state(seeded(seed, lambda: new_cvae(dim, n_classes, cfg)))

    @staticmethod
    def parameter_counts(dim: int, n_classes: int, cfg: GenerativeConfig) -> dict[str, int]:
        """Parameters of the shared decoder and of the whole CVAE."""
        model = new_cvae(dim, n_classes, cfg)
        shared = sum(p.numel() for p in model.decoder.parameters())
        return {"shared": shared, "total": sum(p.numel() for p in model.parameters())}

    @staticmethod
    def released_model(
        weights: StateDict, dim: int, n_classes: int, cfg: GenerativeConfig
    ) -> torch.nn.Module:
        """A decoder holding released weights, called as (z, onehot) (the audit attacks it)."""
        model = seeded(0, lambda: new_cvae(dim, n_classes, cfg))
        load_decoder(model, weights)
        return _Decode(model)

    @staticmethod
    def latent_draw(n: int, cfg: GenerativeConfig, rng: torch.Generator) -> torch.Tensor:
        """The latent draws of `n` synthetic samples: var x N(0, I), as the paper's code."""
        return cfg.latent_var * torch.randn(n, cfg.latent_dim, generator=rng, device=rng.device)

    def released_weights(self) -> StateDict:
        """What this client sends: a copy of its decoder."""
        return decoder_state(self.model)

    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        x, oh = self.x[idx], self.onehot[idx]
        eps = torch.randn(
            len(idx), self.cfg.latent_dim, generator=self.rng_latent, device=self.device
        )
        forward = self.dp_sgd.module if self.dp_sgd is not None else self.model
        recon, mu, logvar = forward(x, oh, eps)
        cfg = self.cfg
        return cvae_loss_per_sample(
            x=x,
            recon=recon,
            mu=mu,
            logvar=logvar,
            beta=cfg.beta,
            batch_size=self.batch_size,
            loss=cfg.cvae_loss,
            obs_std=cfg.obs_std,
        )

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs from the global decoder (the encoder stays local); returns the decoder."""
        load_decoder(self.model, global_weights)
        if self.plan is not None:
            decoder = dict(self.model.named_parameters())
            shared = [decoder[name] for name in global_weights]
            return self._secure_round(self._loss, shared, rnd)
        losses = self.train_epochs(self.cfg.local_epochs)
        return ClientUpdate(self.released_weights(), self.n_released, self._metrics(losses))

    def train_epochs(self, n_epochs: int) -> list[float]:
        """`n_epochs` local epochs from the current weights; the mean loss of each step."""
        self.model.train()
        losses = []
        for _ in range(n_epochs):
            for idx in self._batches():
                if self.dp_sgd is not None:
                    loss = self._loss(idx) if len(idx) else None
                    dp_step(self.dp_sgd, loss, self.groups)
                else:
                    loss = self._loss(idx)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.mean().backward()
                    self.optimizer.step()
                if loss is not None:
                    losses.append(float(loss.detach().mean()))
        self._release_gradients(self.dp_sgd.optimizer if self.dp_sgd else self.optimizer)
        return losses

    @torch.no_grad()
    def sample(
        self, global_weights: StateDict, labels: np.ndarray, rng: torch.Generator
    ) -> np.ndarray:
        """Synthetic embeddings (model space) from the global decoder: z = var x N(0, I), as in
        the paper's code (`--cvae_var` scales the latent draw)."""
        load_decoder(self.model, global_weights)
        self.model.eval()
        z = self.latent_draw(len(labels), self.cfg, rng).to(self.device)
        y = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        return self.model.decode(z, F.one_hot(y, self.n_classes).float()).cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self._rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_rng_state(state)


class _Decode(torch.nn.Module):
    """A CVAE's decode(z, onehot) as a module call."""

    def __init__(self, model: CVAE):
        super().__init__()
        self.model = model.eval()

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z, onehot)
