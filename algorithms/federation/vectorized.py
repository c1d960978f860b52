"""The vectorized path: every simulated client of a DP-CVAE or DP-CGAN run trains at once, as one
stacked model (algorithms/federation/stacked.py), for GPUs.

The clients stay what they are in the per-client path (dpcvae.py, dpcgan.py): their data, their
random generators, their DP optimizer's noise multiplier and expected batch size, their
accountant. Only the arithmetic is batched. Each step, every client draws its own Poisson batch
(that of `poisson_batch`, or at the patient unit `patient_poisson_batch`'s, each patient a
clipping group: stacked_batches.py), a padded slice with a mask; the per-sample losses of all
clients come from one batched forward pass; the clipped sums from one backward pass
(`clip_and_sum_stacked`); each client's noise from its own generator, with the calls of its own
DP optimizer (`noise_and_account_stacked`); one Adam per client (`StackedAdam`). A client whose
steps of the round are done (sizes differ) is masked out of the rest (no draw, no update, no
accountant step). Each round's shared parts are the clients' updates, which the server
averages with the one averaging function (`fedavg_aggregate`) as in the per-client path.

With the same generators the vectorized path draws exactly what the per-client path draws; the
results differ by floating-point rounding only (batched products sum in another order), to about
1e-6 relative (tests/algorithms/federation/test_vectorized.py). Once training ends,
`write_back` returns every client's weights and Adam state to its objects, so that sampling,
the privacy report and checkpoints read them as in the per-client path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, Rounds, fedavg_aggregate, run_rounds
from algorithms.federation.stacked import Layout, StackedAdam, forward, pad_rows, stack, unstack
from algorithms.federation.stacked_batches import (
    Batch,
    batch_groups,
    poisson_draw,
    with_fake_groups,
)
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.privacy.dp_client import DPClient
from algorithms.privacy.ghost_clipping import clip_and_sum_stacked
from algorithms.privacy.opacus_compat import noise_and_account_stacked
from models.cvae import cvae_loss_per_sample

C = TypeVar("C", bound=DPClient)  # an engine's client class


class _Engine(Generic[C]):
    """What both stacked models share: the clients' data, their batches, the DP step."""

    def __init__(self, clients: Sequence[C]):
        self.clients = list(clients)
        self.device = clients[0].device
        states = [c.dp_sgd for c in clients]
        # every client's DP-SGD state (DP on), or none (DP off)
        self.dp_sgd = [p for p in states if p is not None]
        if self.dp_sgd and len(self.dp_sgd) != len(states):
            raise ValueError("the vectorized path needs DP on for every client or for none")
        self.dp = bool(self.dp_sgd)
        units = {c.patients is not None for c in clients}
        if len(units) != 1:
            raise ValueError("the vectorized path needs one privacy unit for every client")
        self.per_patient = units == {True}  # user-level DP-SGD (the patient unit)
        n_max = max(c.n for c in clients)
        self.x = pad_rows([c.x for c in clients], n_max)
        self.onehot = pad_rows([c.onehot for c in clients], n_max)
        self.rows = torch.arange(len(clients), device=self.device)[:, None]
        self.orders: list[torch.Tensor | None] = [None] * len(clients)

    def steps_in_round(self) -> list[int]:
        return [c.cfg.local_epochs * c.steps_epoch for c in self.clients]

    def batch(self, step: int, active: Sequence[bool]) -> Batch:
        """Each active client's next batch, drawn from its own generator as its `_batches`
        does: Poisson under DP, the epoch's shuffled order otherwise."""
        if self.dp:
            masks = [
                poisson_draw(c, p.sample_rate)
                if on
                else torch.zeros(0, dtype=torch.bool, device=self.device)
                for c, p, on in zip(self.clients, self.dp_sgd, active)
            ]
            drawn = pad_rows(masks, self.x.shape[1])
            counts = drawn.sum(dim=1).tolist()
            # the drawn rows first, in increasing order (as torch.nonzero lists them)
            order = torch.sort((~drawn).to(torch.uint8), dim=1, stable=True).indices
            idx = order[:, : max(1, *counts)]
            groups = batch_groups(self.clients, idx, counts) if self.per_patient else None
            return Batch(idx, counts, groups)
        picks = []
        for k, (c, on) in enumerate(zip(self.clients, active)):
            if not on:
                picks.append(torch.zeros(0, dtype=torch.int64, device=self.device))
                continue
            j = step % c.steps_epoch
            if j == 0:
                self.orders[k] = torch.randperm(c.n, generator=c.rng_batches, device=self.device)
            epoch = self.orders[k]
            if epoch is None:
                raise RuntimeError(f"client {c.id}: an epoch's order is drawn at its first step")
            picks.append(epoch[j * c.batch_size : (j + 1) * c.batch_size])
        counts = [len(p) for p in picks]
        return Batch(pad_rows(picks, max(1, *counts)), counts)

    def gather(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[self.rows, batch.idx], self.onehot[self.rows, batch.idx]

    def gradient(
        self,
        *,
        loss: torch.Tensor,
        mask: torch.Tensor,
        active: Sequence[bool],
        layout: Layout,
        flat: torch.Tensor,
        tape: list | None,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The update direction of every client from its masked per-sample losses (K, b): under
        DP its clipped (per sample, or per group), noised sum over the expected batch size (and
        its accountant's step), otherwise the gradient of its batch's mean loss.

        Args:
            loss: the per-sample losses (K, b), padded slots zero.
            mask: 1.0 where a slot holds a sample (K, b).
            active: which clients take this step.
            layout: where each parameter sits in `flat`.
            flat: the stacked parameters (K, P) the loss depends on.
            tape: the linear layers' records of the forward pass (under DP; None otherwise).
            groups: each sample's clipping group (K, b) at the patient unit (None: per sample).
        """
        if self.dp:
            if tape is None:
                raise RuntimeError("a DP step records its linear layers on a tape")
            clip = self.dp_sgd[0].optimizer.max_grad_norm
            grad = clip_and_sum_stacked(tape, loss, clip, layout, groups)
            noise_and_account_stacked(self.dp_sgd, grad, layout, active)
            return grad
        return torch.autograd.grad(_masked_mean(loss, mask).sum(), flat)[0]

    def train_round(self) -> list[list[float]]:
        """One round of local epochs for every client; each client's step losses."""
        steps = self.steps_in_round()
        losses, seen = [], []
        for t in range(max(steps)):
            active = [t < s for s in steps]
            loss, counts = self.step(t, active)
            losses.append(loss.detach())
            seen.append([on and n > 0 for on, n in zip(active, counts)])
        table = torch.stack(losses).cpu().tolist()
        return [[row[k] for row, ok in zip(table, seen) if ok[k]] for k in range(len(self.clients))]

    def step(self, t: int, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]:
        raise NotImplementedError

    def fit_round(self, chosen: Sequence[int], weights: StateDict, rnd: int) -> list[ClientUpdate]:
        """`run_rounds`'s FitRound: every client's local round from the global weights."""
        if list(chosen) != list(range(len(self.clients))):
            raise ValueError("the vectorized path trains every client in every round")
        self.load_shared(weights)
        losses = self.train_round()
        return [
            ClientUpdate(self.shared(k), c.n_released, c._metrics(step_losses))
            for k, (c, step_losses) in enumerate(zip(self.clients, losses))
        ]

    def load_shared(self, weights: StateDict) -> None:
        raise NotImplementedError

    def shared(self, k: int) -> StateDict:
        raise NotImplementedError

    def write_back(self, k: int) -> None:
        raise NotImplementedError


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each client's mean over its samples (0 for an empty batch)."""
    return (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _load_columns(flat: torch.Tensor, layout: Layout, names: list[str], weights: StateDict):
    """Every client's columns of `names` set to the same (global) weights."""
    row = torch.cat([weights[n].reshape(-1) for n in names]).to(flat.device, flat.dtype)
    with torch.no_grad():
        flat[:, layout.columns(names)] = row


class CVAEEngine(_Engine[CVAEClient]):
    """DP-CVAE clients as one stacked CVAE (encoder and decoder DP-trained, decoder shared)."""

    def __init__(self, clients: Sequence[CVAEClient]):
        super().__init__(clients)
        c = clients[0]
        self.model, self.cfg = c.model, c.cfg
        self.layout, self.flat = stack([c.model for c in clients], self.device)
        self.names = list(self.layout.slots)
        self.decoder = [n for n in self.names if n.startswith("decoder.")]
        self.adam = StackedAdam(self.flat, c.cfg.cvae_learning_rate, (0.9, 0.999))
        for k, client in enumerate(clients):
            self.adam.load(k, self.layout, client.optimizer, self.names)
        self.batch_sizes = torch.tensor([float(c.batch_size) for c in clients], device=self.device)[
            :, None
        ]

    def load_shared(self, weights: StateDict) -> None:
        _load_columns(self.flat, self.layout, self.decoder, weights)

    def shared(self, k: int) -> StateDict:
        row = self.layout.row(self.flat, k)
        return {n: row[n].detach().clone() for n in self.decoder}

    def forward(self, x, onehot, eps, tape):
        """CVAE.forward on stacked clients: reconstruction, mu, logvar."""
        params, model = self.layout.views(self.flat), self.model
        scaled = x * model.encoder_scale if model.encoder_scale != 1.0 else x
        h = forward(model.encoder, "encoder", params, torch.cat([scaled, onehot], dim=2), tape)
        mu = forward(model.mu, "mu", params, h, tape)
        logvar = forward(model.logvar, "logvar", params, h, tape)
        z = mu + eps * torch.exp(0.5 * logvar)
        recon = forward(model.decoder, "decoder", params, torch.cat([z, onehot], dim=2), tape)
        return recon, mu, logvar

    def step(self, t: int, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]:
        batch = self.batch(t, active)
        x, onehot = self.gather(batch)
        latent = self.cfg.latent_dim
        eps = pad_rows(
            [
                torch.randn(n, latent, generator=c.rng_latent, device=self.device)
                if n
                else torch.zeros(0, latent, device=self.device)
                for c, n in zip(self.clients, batch.counts)
            ],
            batch.idx.shape[1],
        )
        tape: list | None = [] if self.dp else None
        recon, mu, logvar = self.forward(x, onehot, eps, tape)
        cfg = self.cfg
        loss = cvae_loss_per_sample(
            x=x,
            recon=recon,
            mu=mu,
            logvar=logvar,
            beta=cfg.beta,
            batch_size=self.batch_sizes,
            loss=cfg.cvae_loss,
            obs_std=cfg.obs_std,
        )
        loss = loss * batch.mask
        grad = self.gradient(
            loss=loss,
            mask=batch.mask,
            active=active,
            layout=self.layout,
            flat=self.flat,
            tape=tape,
            groups=batch.groups,
        )
        self.adam.step(grad, active)
        return _masked_mean(loss, batch.mask), batch.counts

    def write_back(self, k: int) -> None:
        client = self.clients[k]
        unstack(self.layout, self.flat, k, client.model)
        self.adam.save(k, self.layout, client.optimizer, self.names)


class CGANEngine(_Engine[CGANClient]):
    """DP-CGAN clients as one stacked generator and one stacked discriminator (DP-trained); the
    generator is shared."""

    def __init__(self, clients: Sequence[CGANClient]):
        super().__init__(clients)
        c = clients[0]
        self.cfg, self.n_classes = c.cfg, c.n_classes
        self.gen, self.disc = c.generator, c.discriminator
        self.layout_g, self.flat_g = stack([c.generator for c in clients], self.device)
        self.layout_d, self.flat_d = stack([c.discriminator for c in clients], self.device)
        betas = (0.5, 0.999)
        self.adam_g = StackedAdam(self.flat_g, c.cfg.gan_lr, betas)
        self.adam_d = StackedAdam(self.flat_d, c.cfg.gan_lr, betas)
        for k, client in enumerate(clients):
            self.adam_g.load(k, self.layout_g, client.opt_g, list(self.layout_g.slots))
            self.adam_d.load(k, self.layout_d, client.opt_d, list(self.layout_d.slots))

    def load_shared(self, weights: StateDict) -> None:
        _load_columns(self.flat_g, self.layout_g, list(self.layout_g.slots), weights)

    def shared(self, k: int) -> StateDict:
        return {n: v.detach().clone() for n, v in self.layout_g.row(self.flat_g, k).items()}

    def _fakes(self, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each client's latent draws and uniform labels (its `_fake`), padded: (K, f, L) and
        (K, f, C)."""
        z, y = [], []
        for c, n in zip(self.clients, sizes):
            rng = c.rng_latent
            z.append(torch.randn(n, self.cfg.latent_dim, generator=rng, device=self.device))
            y.append(torch.randint(0, self.n_classes, (n,), generator=rng, device=self.device))
        width = max(1, *sizes)
        return pad_rows(z, width), F.one_hot(pad_rows(y, width), self.n_classes).float()

    def step(self, t: int, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]:
        """One discriminator step, then one generator step on the same fake batch (CGANClient's
        `_step`)."""
        batch = self.batch(t, active)
        x_real, oh_real = self.gather(batch)
        sizes = [c.n_fake(n) if on else 0 for c, n, on in zip(self.clients, batch.counts, active)]
        z, oh_fake = self._fakes(sizes)
        params_g = self.layout_g.views(self.flat_g)
        fake = forward(self.gen.net, "net", params_g, torch.cat([z, oh_fake], dim=2))
        width = torch.arange(fake.shape[1], device=self.device)
        fake_mask = (width < torch.tensor(sizes, device=self.device)[:, None]).float()
        x = torch.cat([x_real, fake.detach()], dim=1)
        onehot = torch.cat([oh_real, oh_fake], dim=1)
        target = torch.cat([torch.ones_like(batch.mask), torch.zeros_like(fake_mask)], dim=1)
        mask = torch.cat([batch.mask, fake_mask], dim=1)
        tape: list | None = [] if self.dp else None
        params_d = self.layout_d.views(self.flat_d)
        prob = forward(self.disc.net, "net", params_d, torch.cat([x, onehot], dim=2), tape)
        loss = F.binary_cross_entropy(prob.squeeze(2), target, reduction="none") * mask
        grad_d = self.gradient(
            loss=loss,
            mask=mask,
            active=active,
            layout=self.layout_d,
            flat=self.flat_d,
            tape=tape,
            groups=with_fake_groups(batch, fake.shape[1]),
        )
        self.adam_d.step(grad_d, active)
        # the generator against the updated discriminator (not a private step: no record)
        params_d = self.layout_d.views(self.flat_d.detach())
        prob_fake = forward(self.disc.net, "net", params_d, torch.cat([fake, oh_fake], dim=2))
        prob_fake = prob_fake.squeeze(2)
        g_loss = F.binary_cross_entropy(prob_fake, torch.ones_like(prob_fake), reduction="none")
        grad_g = torch.autograd.grad(_masked_mean(g_loss, fake_mask).sum(), self.flat_g)[0]
        self.adam_g.step(grad_g, active)
        return _masked_mean(loss, mask), [n + f for n, f in zip(batch.counts, sizes)]

    def write_back(self, k: int) -> None:
        client = self.clients[k]
        unstack(self.layout_g, self.flat_g, k, client.generator)
        unstack(self.layout_d, self.flat_d, k, client.discriminator)
        self.adam_g.save(k, self.layout_g, client.opt_g, list(self.layout_g.slots))
        self.adam_d.save(k, self.layout_d, client.opt_d, list(self.layout_d.slots))


def make_engine(clients: Sequence[DPClient]) -> _Engine[Any]:
    """The engine of the clients' method: its registry entry's `vectorized` (looked up when
    called: the registry imports this module)."""
    from algorithms.methods import registry

    for method in registry.METHODS:
        engine = method.vectorized
        client = method.client
        if engine is not None and client and all(isinstance(c, client) for c in clients):
            return engine(clients)
    names = ", ".join(m.name for m in registry.METHODS if m.vectorized is not None)
    raise ValueError(f"the vectorized path trains the clients of one method of {names}")


class _Synced:
    """A client as a checkpoint sees it: its state written back from the engine first."""

    def __init__(self, engine: _Engine[Any], k: int):
        self.engine, self.k = engine, k

    def state_dict(self) -> dict:
        self.engine.write_back(self.k)
        return self.engine.clients[self.k].state_dict()

    def load_state_dict(self, state: dict) -> None:
        raise RuntimeError("restore the clients before building the engine")


def run_vectorized(
    clients: Sequence[DPClient],
    global_weights: StateDict,
    rounds: Rounds,
    history: list[dict] | None = None,
    saver: Callable[[Sequence], Callable] | None = None,
) -> tuple[StateDict, list[dict]]:
    """`run_federation` for DP generative clients, all trained at once: every client in every
    round, aggregated by `fedavg_aggregate`. `saver` (RoundCheckpoint.saver) makes the
    after-round hook from the clients. The clients hold their trained state when it returns."""
    if rounds.sampling_rate != 1.0 or rounds.aggregate is not fedavg_aggregate:
        raise ValueError("the vectorized path trains every client and averages (FedAvg)")
    engine = make_engine(clients)
    synced = [_Synced(engine, k) for k in range(len(clients))]
    if saver is not None:
        rounds = dataclasses.replace(rounds, after_round=saver(synced))
    weights, history = run_rounds(len(clients), engine.fit_round, global_weights, rounds, history)
    for k in range(len(clients)):
        engine.write_back(k)
    return weights, history
