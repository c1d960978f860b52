"""DP-FedAvg: FedAvg's linear head trained at each client with DP-SGD (the private federated
classifier, the rival of the data-sharing methods at the same epsilon).

Each client clips and noises every local step (record-level, or patient-level where the data
has patient ids), calibrated for every step of the run (rounds x local epochs x steps) with the
same accountant as DP-CVAE, and sends its head weighted by its noisy count. The rounds, the
averaging and the evaluation are FedAvg's (baselines.run_fedavg); metrics.json gets the privacy
block read from each client's accountant.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.evaluation.heads import make_optimizer, new_head
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate, fedavg_aggregate
from algorithms.methods.baselines import run_fedavg
from algorithms.methods.fedavg import FedAvgConfig, initial_head, lr_at
from algorithms.privacy.accounting import privacy_report
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_client import DPSGDClient, Schedule
from algorithms.privacy.dp_sgd import dp_step
from algorithms.privacy.secure_aggregation import SecurePlan
from algorithms.privacy.secure_dpsgd import SecureServer, dpsgd_plan
from data.clients import ClientData
from utils.checkpoint import RoundCheckpoint
from utils.seeding import FEDAVG_CLIENT, derive_seed


class DPFedAvgClient(DPSGDClient):
    secure = True  # a secure round: the head's clipped-gradient sum, stepped by the coordinator

    """A FedAvg client whose local steps are DP-SGD steps (plain minibatch steps with DP off):
    FedAvg's flags (rounds, local epochs, batch size, optimizer, learning rate schedule) are
    its schedule; it releases its head and its noisy count (the FedAvg weight)."""

    def __init__(
        self,
        *,
        data: ClientData,
        n_classes: int,
        cfg: FedAvgConfig,
        dp: DPConfig,
        seed: int,
        secret: bytes | None = None,
        device: str = "cpu",
        plan: SecurePlan | None = None,
    ):
        """A client of `data`, its head built and made private (DP on).

        Args:
            data: the client's data.
            n_classes: the number of classes.
            cfg: FedAvg's settings (the schedule: n_rounds, local epochs, batch size).
            dp: the DP settings.
            seed: the client seed.
            secret: the key of its private draws (None: drawn here when the noise is secure).
            device: where its tensors and generators live.
            plan: the public plan of its secure releases (None: no secure aggregation).
        """
        super().__init__(
            data=data,
            x=np.asarray(data.x_train, dtype=np.float32),
            n_classes=n_classes,
            schedule=Schedule(cfg.n_rounds, cfg.local_steps, cfg.batch_size),
            dp=dp,
            seed=seed,
            secret=secret,
            device=device,
            plan=plan,
        )
        self.cfg = cfg
        self.head = new_head(self.x.shape[1], n_classes, seed).to(self.device)
        self.optimizer = make_optimizer(cfg.optimizer, self.head.parameters(), cfg.lr)
        self._make_private(self.head, self.optimizer)

    def fit(self, global_weights: StateDict, rnd: int) -> ClientUpdate:
        """Local epochs of (DP-)SGD from the global head; returns the head and the noisy count
        (under secure aggregation: its share of the round's one noisy clipped-gradient sum)."""
        self.head.load_state_dict(global_weights)
        if self.plan is not None:
            params = dict(self.head.named_parameters())
            forward = self.dp_sgd.module if self.dp_sgd is not None else self.head

            def per_sample(idx: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(forward(self.x[idx]), self.y[idx], reduction="none")

            return self._secure_round(per_sample, [params[k] for k in global_weights], rnd)
        self.head.train()
        optimizer = self.dp_sgd.optimizer if self.dp_sgd is not None else self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr_at(self.cfg, rnd)
        forward = self.dp_sgd.module if self.dp_sgd is not None else self.head
        losses = []
        for _ in range(self.cfg.local_steps):
            for idx in self._batches():
                loss = F.cross_entropy(forward(self.x[idx]), self.y[idx], reduction="none")
                if self.dp_sgd is not None:
                    dp_step(self.dp_sgd, loss if len(idx) else None, self.groups)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss.mean().backward()
                    optimizer.step()
                if len(idx):
                    losses.append(float(loss.detach().mean()))
        self._release_gradients(optimizer)
        weights = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return ClientUpdate(weights, self.n_released, self._metrics(losses))

    def state_dict(self) -> dict:
        """What a resumed run needs of this client (optimizer, private streams, accountant)."""
        return {"optimizer": self.optimizer.state_dict(), **self._rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_rng_state(state)


def make_dpfedavg_clients(
    *,
    clients: list[ClientData],
    n_classes: int,
    cfg: FedAvgConfig,
    dp: DPConfig,
    seed: int,
    secret: bytes | None = None,
    device: str = "cpu",
    n_sites: int | None = None,
) -> list[DPFedAvgClient]:
    """One DP-FedAvg client per data set, seeded by the run seed and the client id (FedAvg's
    client stream). `secret`: a site's own key for its secure noise (None: each draws its own).

    Args:
        clients: every client's data (a Flower site: its own).
        n_classes: the number of classes.
        cfg: FedAvg's settings.
        dp: the DP settings.
        seed: the run seed.
        secret: a site's key for its secure noise (None: each client draws its own).
        device: where the clients' tensors and generators live.
        n_sites: the sites of the federation (None: `clients`, a simulation).
    """
    plan = None
    if dp.enabled and dp.secure_aggregation:
        size = (clients[0].x_train.shape[1] + 1) * n_classes  # the linear head's parameters
        sites = n_sites or len(clients)
        plan = dpsgd_plan(dp=dp, shared=size, local=0, n_sites=sites, steps=cfg.n_rounds, seed=seed)
    return [
        DPFedAvgClient(
            data=c,
            n_classes=n_classes,
            cfg=cfg,
            dp=dp,
            seed=derive_seed(seed, FEDAVG_CLIENT, c.id),
            secret=secret,
            device=device,
            plan=plan,
        )
        for c in clients
    ]


def run_dpfedavg(
    *,
    clients: list[ClientData],
    n_classes: int,
    cfg: FedAvgConfig,
    dp: DPConfig,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
    device: str = "cpu",
) -> Outcome:
    """FedAvg's run with DP-SGD clients; its privacy block from their accountants.

    Args:
        clients: every client's data.
        n_classes: the number of classes.
        cfg: FedAvg's settings.
        dp: the DP settings.
        seed: the run seed.
        checkpoint: where rounds are saved and resumed from (None: no checkpoint).
        device: where the heads train.
    """
    fed_clients = make_dpfedavg_clients(
        clients=clients, n_classes=n_classes, cfg=cfg, dp=dp, seed=seed, device=device
    )
    aggregate = fedavg_aggregate
    plan = fed_clients[0].plan
    if plan is not None:  # the coordinator decodes the sites' sum and steps the head
        weights = initial_head(clients[0].x_train.shape[1], n_classes, seed)
        server = SecureServer(
            weights,
            plan,
            lambda ps: make_optimizer(cfg.optimizer, ps, cfg.lr),
            lambda r: lr_at(cfg, r),
        )
        aggregate = server.aggregate
    outcome = run_fedavg(
        clients=clients,
        n_classes=n_classes,
        cfg=cfg,
        seed=seed,
        checkpoint=checkpoint,
        device=device,
        fed_clients=fed_clients,
        aggregate=aggregate,
    )
    privacy = privacy_report(dp, [c.privacy() for c in fed_clients])
    return dataclasses.replace(outcome, privacy=privacy)
