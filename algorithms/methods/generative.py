"""The federation of the DP generative methods (dpcvae.py, dpcgan.py) and the end of their run.

Each client trains its generative model with DP-SGD; each round only the decoder (CVAE) or
generator (CGAN) leaves the client, and the server averages them weighted by training size.
After the last round every client runs `finish_client` (synthesis.py) where its data lives;
this module runs the federation and assembles what the run reports (fidelity, privacy). The
same functions run in process, under Flower and in the audit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from algorithms import presets
from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import Rounds, run_federation
from algorithms.federation.vectorized import run_vectorized
from algorithms.methods.synthesis import (
    FinishedClient,
    at_chance,
    finish_clients,
    global_synthetic_head,
    pooled_synthetic_report,
)
from algorithms.privacy.accounting import NOT_COVERED, privacy_report
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
        server = SecureServer(weights, plan, lambda ps: adam(ps, lr=cfg.cvae_learning_rate))
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


@dataclass(frozen=True)
class ReleasedSampler:
    """Sampling from a released decoder or generator where no client is (the server): the
    clients' own latent draw (`latent_draw`) through the released model (a `Sampler`)."""

    method: str
    dim: int
    n_classes: int
    cfg: GenerativeConfig

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        cls = client_type(self.method)
        model = cls.released_model(weights, self.dim, self.n_classes, self.cfg)
        z = cls.latent_draw(len(labels), self.cfg, rng)
        onehot = torch.nn.functional.one_hot(
            torch.as_tensor(labels, dtype=torch.int64), self.n_classes
        )
        with torch.no_grad():
            return model(z, onehot.float()).numpy()

    def can_sample(self, weights: StateDict) -> np.ndarray:
        return np.ones(self.n_classes, dtype=bool)


FIDELITY_NUMBERS = (
    "wasserstein",
    "precision",
    "recall",
    "density",
    "coverage",
    "synthetic_acc",
    "majority",
)


def fidelity_report(
    cfg: GenerativeConfig, per_client: list[dict[str, float]], global_synthetic: dict | None
) -> dict:
    """The `fidelity` block of metrics.json from the clients' `FinishedClient.fidelity()` (in
    client order) and the global synthetic-only accuracy. `synthetic_at_chance`: the global
    model's synthetic data is within noise of chance (1 / n_classes);
    `synthetic_client_at_majority`: the clients' heads on their own synthetic data are within
    noise of their majority-class rate (`majority`: the share of each client's most frequent
    test class), None when no client sent its test size (Flower). `synthetic_empty`: the
    indices (in client order) of the clients whose synthetic set is empty (the released model
    samples none of their classes): their fidelity and synthetic-only accuracy are None. A
    Flower site whose policy keeps its fidelity statistics on training data sends none of them
    (its synthetic-only accuracy is a test metric and is sent): its values are None and the
    means are over the clients that sent them (None if none did)."""
    fidelity: dict = {"space": f"squashed (temperature {cfg.squash_temperature})"}
    for name in FIDELITY_NUMBERS:
        fidelity[name] = [_finite_or_none(c.get(name)) for c in per_client]
        fidelity[f"{name}_mean"] = _mean_of_finite(fidelity[name])
    sized = [c for c in per_client if not c.get("synthetic_empty")]  # with a synthetic set
    fidelity.pop("majority_mean")  # over the clients whose synthetic-only accuracy is measured:
    fidelity["synthetic_acc_client_majority"] = _mean_of_finite([c.get("majority") for c in sized])
    fidelity["client_majority"] = fidelity.pop("majority")
    fidelity["synthetic_empty"] = [i for i, c in enumerate(per_client) if c.get("synthetic_empty")]
    fidelity["global_synthetic"] = global_synthetic
    n_test = int(sum(c.get("n_test", 0) for c in sized))  # none under Flower: no counts
    at_majority = n_test > 0 and at_chance(
        fidelity["synthetic_acc_mean"], fidelity["synthetic_acc_client_majority"], n_test
    )
    fidelity["synthetic_client_at_majority"] = bool(at_majority) if n_test else None
    fidelity["synthetic_at_chance"] = bool(global_synthetic and global_synthetic["at_chance"])
    return fidelity


def _finite_or_none(value: float | None) -> float | None:
    """A fidelity number as metrics.json stores it: None where there is none (NaN)."""
    return None if value is None or not np.isfinite(value) else float(value)


def _mean_of_finite(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def generative_outcome(
    *,
    params: dict[str, int],
    cfg: GenerativeConfig,
    history: list[dict],
    fidelity: list[dict[str, float]],
    privacy: dict | None,
    global_synthetic: dict | None,
    finished: list[FinishedClient] | None = None,
) -> Outcome:
    """What a generative run reports, from the numbers it shares (`params`: shared, total), the
    clients' fidelity numbers (`FinishedClient.fidelity()`, in client order), its privacy block
    and the global synthetic-only accuracy (`global_synthetic_report`). `finished`: the clients'
    end-of-run results, when they are in this process (their heads' probabilities and synthetic
    sets).

    Args:
        params: the numbers shared (`shared`) and of the whole model (`total`).
        cfg: the generative model's settings.
        history: the per-round history.
        fidelity: the clients' fidelity numbers, in client order.
        privacy: the run's privacy block (None: no DP accounting).
        global_synthetic: the global synthetic-only accuracy (None: not measured).
        finished: the clients' end-of-run results in this process (None: elsewhere).
    """
    return Outcome(
        [f.local for f in finished] if finished else None,
        [f.global_ for f in finished] if finished else None,
        history,
        params_shared=params["shared"],
        privacy=privacy,
        fidelity=fidelity_report(cfg, fidelity, global_synthetic),
        params_model=params["total"],
        synthetic=[(f.synthetic, f.labels) for f in finished] if finished else None,
        joint=[f.joint for f in finished] if finished else None,
    )


def run_generative(
    *,
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    head_cfg: HeadConfig,
    seed: int,
    checkpoint: RoundCheckpoint | None = None,
    execution: Execution = ON_CPU,
) -> Outcome:
    """Federated training of the generative model (resumable from `checkpoint`), then each
    client's `finish_client`.

    Args:
        method: a generative method.
        clients: every client's data.
        n_classes: the number of classes.
        cfg: the generative model's settings.
        dp: the DP settings.
        head_cfg: the heads' settings.
        seed: the run seed.
        checkpoint: where rounds are saved and resumed from (None: no checkpoint).
        execution: the device and whether the vectorized path trains the clients.
    """
    gen_clients, weights, history = train_generative(
        method=method,
        clients=clients,
        n_classes=n_classes,
        cfg=cfg,
        dp=dp,
        seed=seed,
        checkpoint=checkpoint,
        execution=execution,
    )
    finished = finish_clients(
        samplers=gen_clients,
        clients=clients,
        weights=weights,
        n_classes=n_classes,
        cfg=cfg,
        head_cfg=head_cfg,
        seed=seed,
    )
    dim = clients[0].x_train.shape[1]
    sampler = ReleasedSampler(method, dim, n_classes, cfg)
    head = global_synthetic_head(
        sampler=sampler, weights=weights, n_classes=n_classes, cfg=cfg, head_cfg=head_cfg, seed=seed
    )
    return generative_outcome(
        params=count_parameters(method, dim, n_classes, cfg),
        cfg=cfg,
        history=history,
        fidelity=[f.fidelity() for f in finished],
        privacy=dpsgd_privacy_report(dp, cfg, [c.privacy() for c in gen_clients]),
        global_synthetic=pooled_synthetic_report(head, clients, n_classes),
        finished=finished,
    )


def dpsgd_privacy_report(dp: DPConfig, cfg: GenerativeConfig, lines: list[dict]) -> dict:
    """The privacy block of a DP-SGD method (DP-CVAE, DP-CGAN): a preset chosen on private data
    adds its search to what is not covered."""
    search = presets.not_covered(cfg.preset)
    extra = (f"{flag_name(cfg, 'preset')} {cfg.preset}: {search}",) if search else ()
    return privacy_report(dp, lines, not_covered=(*NOT_COVERED, *extra))
