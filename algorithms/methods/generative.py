"""The federation of the DP generative methods (dpcvae.py, dpcgan.py) and the end of their run.

Each client trains its generative model with DP-SGD; each round only the decoder (CVAE) or
generator (CGAN) leaves the client, and the server averages them weighted by training size.
After the last round every client runs `finish_client` (synthesis.py) where its data lives;
this module runs the federation and assembles what the run reports (fidelity, privacy). The
same functions run in process, under Flower and in the audit.
"""

from __future__ import annotations

import dataclasses
import math

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import Rounds, run_federation
from algorithms.federation.vectorized import run_vectorized
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_client import DPClient, adam
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.secure_aggregation import SecurePlan
from algorithms.privacy.secure_dpsgd import SecureServer, check_schedule, dpsgd_plan
from data.clients import ClientData
from utils.checkpoint import RoundCheckpoint
from utils.cli import flag_name
from utils.device import ON_CPU, Execution, one_torch_thread
from utils.seeding import (
    GENERATIVE_CLIENT,
    GENERATIVE_GLOBAL,
    SAMPLING,
    derive_seed,
)


def client_type(method: str) -> type[DPClient]:
    """The client class of a generative method, from its registry entry (looked up when called:
    the registry imports this module)."""
    from algorithms.methods import registry

    if method not in registry.with_flow("generative"):
        names = ", ".join(registry.with_flow("generative"))
        raise ValueError(f"{method!r} is not a generative method ({names})")
    client = registry.get(method).client
    if client is None or not issubclass(client, DPClient):
        raise ValueError(f"{method!r}: its registry entry names no DPClient class")
    return client


def seeded_global_weights(
    method: str, dim: int, n_classes: int, cfg: GenerativeConfig, seed: int
) -> StateDict:
    """The server's initial shared model (decoder or generator), seeded by `seed`."""
    return client_type(method).initial_weights(dim, n_classes, cfg, seed)


def initial_global_weights(
    method: str, dim: int, n_classes: int, cfg: GenerativeConfig, run_seed: int
) -> StateDict:
    """The initial shared model of a run: seeded by the run seed's stream for `method`."""
    seed = derive_seed(run_seed, method, GENERATIVE_GLOBAL)
    return seeded_global_weights(method, dim, n_classes, cfg, seed)


def secure_learning_rate(lr: float, n_sites: int) -> float:
    """The coordinator's Adam step under secure aggregation: `lr` / sqrt(sites). Today each
    site takes an Adam step of about `lr` per coordinate and the coordinator averages K of them,
    so where the noise dominates their signs cancel to about `lr` / sqrt(K); one Adam step on
    the sum would take `lr` whole. (Chosen after a coordinator step of `lr` gave 76.5%
    synthetic-only accuracy on the Fashion-MNIST study's seed 3407: docs/secure_aggregation.md.)"""
    return lr / math.sqrt(n_sites)


def secure_coordinator(weights: StateDict, plan: SecurePlan, cfg: GenerativeConfig) -> SecureServer:
    """The coordinator's side of a secure dpcvae run (main.py's and the Flower ServerApp's):
    the initial decoder and Adam at `secure_learning_rate`."""
    lr = secure_learning_rate(cfg.cvae_learning_rate, plan.n_sites)
    return SecureServer(weights, plan, lambda ps: adam(ps, lr=lr))


def secure_plan(
    *,
    method: str,
    dim: int,
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    sites: tuple[int, int],
) -> SecurePlan | None:
    """The public plan of a generative run's secure releases (None without
    --secure_aggregation): the shared and the local part of the model, one release per round,
    the count's release composed; refused (one line) for a method without a secure round and
    for a schedule of other than one full-batch step per round.

    Args:
        method: a generative method.
        dim: the embedding size.
        n_classes: the number of classes.
        cfg: the generative settings (the schedule).
        dp: the DP settings.
        sites: (sites in a sum, run seed).
    """
    if not (dp.enabled and dp.secure_aggregation):
        return None
    if not client_type(method).secure:
        raise ValueError(f"{flag_name(dp, 'secure_aggregation')}: {method} has no secure round")
    if cfg.batch_size != 0 or cfg.local_epochs != 1:
        schedule = (
            f"{flag_name(cfg, 'local_epochs')} {cfg.local_epochs} "
            f"{flag_name(cfg, 'batch_size')} {cfg.batch_size}"
        )
        check_schedule(0, schedule)
    counts = count_parameters(method, dim, n_classes, cfg)
    return dpsgd_plan(
        dp=dp,
        shared=counts["shared"],
        local=counts["total"] - counts["shared"],
        n_sites=sites[0],
        steps=cfg.n_rounds,
        seed=sites[1],
    )


def make_clients(
    *,
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    seed: int,
    secret: bytes | None = None,
    device: str = "cpu",
    n_sites: int | None = None,
) -> list[DPClient]:
    """One client object per data set, seeded by the run seed, the method and the client id,
    its tensors and generators on `device`. `secret`: a site's own key for its secure noise
    (None: each client draws its own).

    Args:
        method: a generative method (its registry entry names the client class).
        clients: every client's data.
        n_classes: the number of classes.
        cfg: the generative model's settings.
        dp: the DP settings.
        seed: the run seed.
        secret: a site's own key for its secure noise (None: each client draws its own).
        device: where the clients' tensors and generators live.
        n_sites: the sites of the federation (None: `clients`, a simulation).
    """
    cls = client_type(method)
    plan = secure_plan(
        method=method,
        dim=clients[0].x_train.shape[1],
        n_classes=n_classes,
        cfg=cfg,
        dp=dp,
        sites=(n_sites or len(clients), seed),
    )
    return [
        cls(
            data=c,
            n_classes=n_classes,
            cfg=cfg,
            dp=dp,
            seed=derive_seed(seed, method, GENERATIVE_CLIENT, c.id),
            secret=secret,
            device=device,
            plan=plan,
        )
        for c in clients
    ]


def count_parameters(method: str, dim: int, n_classes: int, cfg: GenerativeConfig) -> dict:
    """Parameters of the shared part and of the whole generative model (CVAE vs CGAN size)."""
    return client_type(method).parameter_counts(dim, n_classes, cfg)


def train_generative(
    *,
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
    execution: Execution = ON_CPU,
) -> tuple[list[DPClient], StateDict, list[dict]]:
    """The federated training alone: the clients (with their accountants), the final global
    decoder or generator, and the per-round history. With `checkpoint`, training continues from
    its last round (if any) and the checkpoint is rewritten after every round.

    `execution.vectorized`: every client at once as one stacked model
    (algorithms/federation/vectorized.py; the same results up to rounding). Otherwise, on CPU,
    the torch thread budget (torch.get_num_threads(), main.py's --num_threads) is spent on
    clients, not inside them: that many clients train at once, one thread each. Threads inside
    one client meet at every operation and slow down 10-20x when other processes share the
    cores; clients in threads do not wait on each other. Results do not depend on it. On CUDA
    clients take turns.

    Args:
        method: a generative method.
        clients: every client's data.
        n_classes: the number of classes.
        cfg: the generative model's settings.
        dp: the DP settings.
        seed: the run seed.
        checkpoint: where rounds are saved and resumed from (None: no checkpoint).
        execution: the device and whether the vectorized path trains the clients.
    """
    dim = clients[0].x_train.shape[1]
    gen_clients = make_clients(
        method=method,
        clients=clients,
        n_classes=n_classes,
        cfg=cfg,
        dp=dp,
        seed=seed,
        device=execution.device,
    )
    weights = initial_global_weights(method, dim, n_classes, cfg, seed)
    history: list[dict] = []
    start = 0
    if checkpoint is not None:
        weights, history, start = checkpoint.restore(gen_clients, weights)
    rounds = Rounds(cfg.n_rounds, seed=derive_seed(seed, SAMPLING), start_round=start, desc=method)
    plan = gen_clients[0].plan
    if plan is not None:  # the coordinator decodes the sites' sum and steps the shared part
        if execution.vectorized:
            raise ValueError(f"{flag_name(dp, 'secure_aggregation')} has no vectorized path")
        server = secure_coordinator(weights, plan, cfg)
        rounds = dataclasses.replace(rounds, aggregate=server.aggregate)
    if execution.vectorized:
        saver = checkpoint.saver if checkpoint is not None else None
        weights, history = run_vectorized(gen_clients, weights, rounds, history, saver)
        return gen_clients, weights, history
    if checkpoint is not None:
        rounds = dataclasses.replace(rounds, after_round=checkpoint.saver(gen_clients))
    with one_torch_thread() as threads:
        workers = 1 if execution.device != "cpu" else min(threads, len(gen_clients))
        weights, history = run_federation(gen_clients, weights, rounds, history, workers)
    return gen_clients, weights, history
