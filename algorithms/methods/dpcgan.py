"""DP-CGAN (the paper's generative baseline): each client trains a conditional GAN with DP-SGD
on the discriminator, the only network that sees data; the generator, trained through the
discriminator only, is private by post-processing and is what the server averages.

The rounds, the synthesis and the lambda protocol are shared with DP-CVAE (generative.py)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from algorithms.privacy.dp_client import DPClient, adam
from algorithms.privacy.dp_sgd import dp_step
from algorithms.privacy.generative_config import GenerativeConfig
from models.cgan import Discriminator, Generator
from utils.seeding import INIT_DISCRIMINATOR, INIT_GENERATOR, derive_seed, seeded


class CGANClient(DPClient):
    """A DP-CGAN client: DP-SGD on the discriminator; the generator is the shared part. It
    starts every round from the global generator (never re-initialized)."""

    # at the patient unit each sampled patient's records form one clipped group, each fake
    # sample its own (`_groups`)
    units = ("record", "patient")

    def _build(self, seed: int) -> None:
        """Generator and discriminator with their Adam optimizers; the discriminator's DP."""
        dim, n_classes, cfg = self.x.shape[1], self.n_classes, self.cfg
        self.generator = seeded(
            derive_seed(seed, INIT_GENERATOR), lambda: Generator(dim, n_classes, cfg.latent_dim)
        ).to(self.device)
        self.discriminator = seeded(
            derive_seed(seed, INIT_DISCRIMINATOR), lambda: Discriminator(dim, n_classes)
        ).to(self.device)
        betas = (0.5, 0.999)
        self.opt_g = adam(self.generator.parameters(), lr=cfg.gan_lr, betas=betas)
        self.opt_d = adam(self.discriminator.parameters(), lr=cfg.gan_lr, betas=betas)
        self._make_private(self.discriminator, self.opt_d)

    @staticmethod
    def initial_weights(dim: int, n_classes: int, cfg: GenerativeConfig, seed: int) -> StateDict:
        """The server's initial generator, seeded by `seed`."""
        gen = seeded(seed, lambda: Generator(dim, n_classes, cfg.latent_dim))
        return {k: v.detach().clone() for k, v in gen.state_dict().items()}

    @staticmethod
    def parameter_counts(dim: int, n_classes: int, cfg: GenerativeConfig) -> dict[str, int]:
        """Parameters of the shared generator and of generator plus discriminator."""
        g, d = Generator(dim, n_classes, cfg.latent_dim), Discriminator(dim, n_classes)
        shared = sum(p.numel() for p in g.parameters())
        return {"shared": shared, "total": shared + sum(p.numel() for p in d.parameters())}

    @staticmethod
    def released_model(
        weights: StateDict, dim: int, n_classes: int, cfg: GenerativeConfig
    ) -> torch.nn.Module:
        """A generator holding released weights, called as (z, onehot) (the audit attacks it)."""
        gen = seeded(0, lambda: Generator(dim, n_classes, cfg.latent_dim))
        gen.load_state_dict(weights)
        return gen.eval()

    @staticmethod
    def latent_draw(n: int, cfg: GenerativeConfig, rng: torch.Generator) -> torch.Tensor:
        """The latent draws of `n` synthetic samples: N(0, I)."""
        return torch.randn(n, cfg.latent_dim, generator=rng, device=rng.device)

    def released_weights(self) -> StateDict:
        """What this client sends: a copy of its generator."""
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}

    def _fake(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated samples with uniformly drawn labels (no use of the client's label counts)."""
        rng, device = self.rng_latent, self.device
        z = torch.randn(n, self.cfg.latent_dim, generator=rng, device=device)
        y = torch.randint(0, self.n_classes, (n,), generator=rng, device=device)
        oh = F.one_hot(y, self.n_classes).float()
        return self.generator(z, oh), oh

    def n_fake(self, n_real: int) -> int:
        """Fake samples per step, as many as real units on average: under DP the expected batch
        size q * n~ (the noisy count of records, or of patients at the patient unit: the public
        number the DP optimizer divides by, whatever the drawn batch; each fake is clipped
        alone, like one patient), otherwise the batch's own size `n_real`."""
        if self.dp_sgd is not None:
            return max(1, round(self.dp_sgd.sample_rate * self.n_released))
        return n_real

    def _groups(self, n_fake: int) -> torch.Tensor | None:
        """The clipping groups of a discriminator batch at the patient unit (None: per record):
        each real record's patient (0..k-1, from `_batches`), then each fake sample its own
        group k, k+1, ... (a fake uses no record, so it is clipped alone as at the record unit)."""
        if self.groups is None:
            return None
        first = int(self.groups.max()) + 1 if len(self.groups) else 0
        fakes = torch.arange(first, first + n_fake, device=self.groups.device)
        return torch.cat([self.groups, fakes])

    def _step(self, idx: torch.Tensor) -> float:
        """One discriminator step, then one generator step on the same fake batch."""
        fake, oh_fake = self._fake(self.n_fake(len(idx)))
        # The fake samples join the real Poisson batch in one clipped and noised step. Their
        # terms use no record, and their number is fixed for the run from the client's noisy
        # count, like the sampling rate: one record (at the patient unit, one patient with all
        # its records, clipped as one group) still changes the clipped sum by at most
        # max_grad_norm.
        x = torch.cat([self.x[idx], fake.detach()])
        oh = torch.cat([self.onehot[idx], oh_fake])
        target = torch.cat(
            [torch.ones(len(idx), device=self.device), torch.zeros(len(fake), device=self.device)]
        )
        disc = self.dp_sgd.module if self.dp_sgd is not None else self.discriminator
        loss = F.binary_cross_entropy(disc(x, oh), target, reduction="none")
        if self.dp_sgd is not None:
            dp_step(self.dp_sgd, loss, self._groups(len(fake)))
        else:
            self.opt_d.zero_grad(set_to_none=True)
            loss.mean().backward()
            self.opt_d.step()
        # the generator against the updated discriminator (not a private step: no record; the
        # bare discriminator, so the fast mode's tape records nothing)
        with self.dp_sgd.paused() if self.dp_sgd is not None else contextlib.nullcontext():
            prob = self.discriminator(fake, oh_fake)
            g_loss = F.binary_cross_entropy(prob, torch.ones_like(prob))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward(inputs=list(self.generator.parameters()))
            self.opt_g.step()
        return float(loss.detach().mean())

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs from the global generator; returns the generator."""
        self.generator.load_state_dict(global_weights)
        losses = self.train_epochs(self.cfg.local_epochs)
        return ClientUpdate(self.released_weights(), self.n_released, self._metrics(losses))

    def train_epochs(self, n_epochs: int) -> list[float]:
        """`n_epochs` local epochs from the current weights; the discriminator's step losses."""
        self.generator.train()
        self.discriminator.train()
        losses = []
        for _ in range(n_epochs):
            for idx in self._batches():
                losses.append(self._step(idx))
        self._release_gradients(self.opt_g, self.dp_sgd.optimizer if self.dp_sgd else self.opt_d)
        return losses

    @torch.no_grad()
    def sample(
        self, global_weights: StateDict, labels: np.ndarray, rng: torch.Generator
    ) -> np.ndarray:
        self.generator.load_state_dict(global_weights)
        self.generator.eval()
        z = self.latent_draw(len(labels), self.cfg, rng).to(self.device)
        y = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        oh = F.one_hot(y, self.n_classes).float()
        return self.generator(z, oh).cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            **self._rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self._load_rng_state(state)
