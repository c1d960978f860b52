"""The federation of the DP generative methods (dpcvae.py, dpcgan.py) and the end of their run.

Each client trains its generative model with DP-SGD; each round only the decoder (CVAE) or
generator (CGAN) leaves the client, and the server averages them weighted by training size.
After the last round every client runs `finish_client` where its data lives: it samples a
synthetic dataset from the global model, trains a head on its real data and one on the synthetic
data, and measures the fidelity of the synthetic data; the lambda protocol (evaluation.py) then
mixes the two heads. The same functions run in process, under Flower and in the audit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algorithms.aggregation import StateDict
from algorithms.dp_client import DPClient, GenerativeConfig
from algorithms.dpcgan import CGANClient
from algorithms.dpcvae import CVAEClient
from algorithms.evaluation import ClientProbs, Outcome
from algorithms.federation import run_federation
from algorithms.heads import HeadConfig, predict_proba, train_head
from algorithms.privacy import DPConfig, privacy_report
from algorithms.vectorized import run_vectorized
from data.clients import ClientData
from data.features import squash, unsquash
from utils.checkpoint import RoundCheckpoint
from utils.device import ON_CPU, Execution
from utils.metrics import prdc, sinkhorn_wasserstein
from utils.progress import progress
from utils.seeding import (
    GENERATIVE_CLIENT,
    GENERATIVE_GLOBAL,
    LABELS,
    LOCAL_HEAD,
    SAMPLE,
    SAMPLING,
    SYNTHETIC_HEAD,
    derive_seed,
    generator,
)

# The client class of each generative method (the registry's entries run these).
CLIENT_TYPES: dict[str, type[CVAEClient] | type[CGANClient]] = {
    "dpcvae": CVAEClient,
    "dpcgan": CGANClient,
}


def client_type(method: str) -> type[CVAEClient] | type[CGANClient]:
    if method not in CLIENT_TYPES:
        raise ValueError(f"{method!r} is not a generative method ({', '.join(CLIENT_TYPES)})")
    return CLIENT_TYPES[method]


def init_global_weights(
    method: str, dim: int, n_classes: int, cfg: GenerativeConfig, seed: int
) -> StateDict:
    """The server's initial shared model (decoder or generator), seeded by `seed`."""
    return client_type(method).initial_weights(dim, n_classes, cfg, seed)


def initial_global_weights(
    method: str, dim: int, n_classes: int, cfg: GenerativeConfig, run_seed: int
) -> StateDict:
    """The initial shared model of a run: seeded by the run seed's stream for `method`."""
    seed = derive_seed(run_seed, method, GENERATIVE_GLOBAL)
    return init_global_weights(method, dim, n_classes, cfg, seed)


def make_clients(
    method: str,
    clients: list[ClientData],
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    seed: int,
    device: str = "cpu",
) -> list[DPClient]:
    """One client object per data set, seeded by the run seed, the method and the client id,
    its tensors and generators on `device`."""
    cls = client_type(method)
    return [
        cls(c, n_classes, cfg, dp, derive_seed(seed, method, GENERATIVE_CLIENT, c.id), device)
        for c in clients
    ]


def count_parameters(method: str, dim: int, n_classes: int, cfg: GenerativeConfig) -> dict:
    """Parameters of the shared part and of the whole generative model (CVAE vs CGAN size)."""
    return client_type(method).parameter_counts(dim, n_classes, cfg)


def train_generative(
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

    `execution.vectorized`: every client at once as one stacked model (algorithms/vectorized.py;
    the same results up to rounding). Otherwise, on CPU, the torch thread budget
    (torch.get_num_threads(), main.py's --num_threads) is spent on clients, not inside them:
    that many clients train at once, one thread each. Threads inside one client meet at every
    operation and slow down 10-20x when other processes share the cores; clients in threads do
    not wait on each other. Results do not depend on it. On CUDA clients take turns."""
    dim = clients[0].x_train.shape[1]
    gen_clients = make_clients(method, clients, n_classes, cfg, dp, seed, execution.device)
    weights = initial_global_weights(method, dim, n_classes, cfg, seed)
    history, start = [], 0
    if checkpoint is not None:
        weights, history, start = checkpoint.restore(gen_clients, weights)
    rounds = {"seed": derive_seed(seed, SAMPLING), "start_round": start, "history": history}
    if execution.vectorized:
        saver = checkpoint.saver if checkpoint is not None else None
        weights, history = run_vectorized(
            gen_clients, weights, cfg.n_rounds, **rounds, desc=method, saver=saver
        )
        return gen_clients, weights, history
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights, history = run_federation(
            gen_clients,
            weights,
            cfg.n_rounds,
            **rounds,
            desc=method,
            workers=1 if execution.device != "cpu" else min(threads, len(gen_clients)),
            after_round=checkpoint.saver(gen_clients) if checkpoint is not None else None,
        )
    finally:
        torch.set_num_threads(threads)
    return gen_clients, weights, history


def synthetic_label_counts(
    y: np.ndarray, n_classes: int, cfg: GenerativeConfig, rng: np.random.Generator
) -> np.ndarray:
    """Samples to generate per class: the client's own counts x factor (`match`, as the paper),
    or its total x factor spread evenly over all classes (`uniform`)."""
    if cfg.synthetic_labels == "match":
        return (np.bincount(y, minlength=n_classes) * cfg.generated_factor).astype(np.int64)
    total = int(len(y) * cfg.generated_factor)
    counts = np.full(n_classes, total // n_classes, dtype=np.int64)
    counts[rng.choice(n_classes, size=total % n_classes, replace=False)] += 1
    return counts


def synthesize(
    client: DPClient,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A client's synthetic set from the global model (model space) and its labels, as the
    protocol draws them (`--synthetic_labels`, `--generated_factor`; run seed `seed`)."""
    rng = np.random.default_rng(derive_seed(seed, LABELS, data.id))
    labels = np.repeat(
        np.arange(n_classes), synthetic_label_counts(data.y_train, n_classes, cfg, rng)
    )
    rng = generator(derive_seed(seed, SAMPLE, data.id), client.device)
    synthetic = client.sample(weights, labels, rng)
    return synthetic, labels


@dataclass
class FinishedClient:
    """One client's last step: the probabilities of its head on real data (local) and of its
    head on synthetic data (global), the fidelity of its synthetic set, and that set. Only the
    fidelity numbers leave the client (with the validation accuracies of the lambda grid)."""

    local: ClientProbs
    global_: ClientProbs
    wasserstein: float
    quality: dict[str, float]
    synthetic: np.ndarray
    labels: np.ndarray


def finish_client(
    client: DPClient,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> FinishedClient:
    """Run where the client's data lives: synthesize from the global model, fit a head on real
    and one on synthetic data (on the client's device), and measure the fidelity of the
    synthetic embeddings."""
    synthetic, labels = synthesize(client, data, weights, n_classes, cfg, seed)
    real = squash(data.x_train, cfg.squash_temperature)
    wasserstein = sinkhorn_wasserstein(real, synthetic, device=client.device.type)
    quality = prdc(real, synthetic)
    head_syn = train_head(
        unsquash(synthetic, cfg.squash_temperature),
        labels,
        n_classes,
        head_cfg,
        derive_seed(seed, SYNTHETIC_HEAD, data.id),
        client.device,
    )
    head_real = train_head(
        data.x_train,
        data.y_train,
        n_classes,
        head_cfg,
        derive_seed(seed, LOCAL_HEAD, data.id),
        client.device,
    )
    return FinishedClient(
        local=ClientProbs(
            predict_proba(head_real, data.x_val), predict_proba(head_real, data.x_test)
        ),
        global_=ClientProbs(
            predict_proba(head_syn, data.x_val), predict_proba(head_syn, data.x_test)
        ),
        wasserstein=wasserstein,
        quality=quality,
        synthetic=synthetic,
        labels=labels,
    )


def fidelity_report(
    cfg: GenerativeConfig, wasserstein: list[float], quality: list[dict[str, float]]
) -> dict:
    """The `fidelity` block of metrics.json from the clients' values (in client order)."""
    fidelity = {
        "space": f"squashed (temperature {cfg.squash_temperature})",
        "wasserstein": wasserstein,
        "wasserstein_mean": float(np.mean(wasserstein)),
    }
    for name in ("precision", "recall", "density", "coverage"):
        fidelity[name] = [q[name] for q in quality]
        fidelity[f"{name}_mean"] = float(np.nanmean(fidelity[name]))
    return fidelity


def generative_outcome(
    method: str,
    dim: int,
    n_classes: int,
    cfg: GenerativeConfig,
    dp: DPConfig,
    history: list[dict],
    fidelity: list[tuple[float, dict[str, float]]],
    privacy: list[dict],
    finished: list[FinishedClient] | None = None,
) -> Outcome:
    """What a generative run reports, from the clients' fidelity numbers and privacy lines (in
    client order). `finished`: the clients' end-of-run results, when they are in this process
    (their heads' probabilities and synthetic sets)."""
    params = count_parameters(method, dim, n_classes, cfg)
    return Outcome(
        [f.local for f in finished] if finished else None,
        [f.global_ for f in finished] if finished else None,
        history,
        params_shared=params["shared"],
        privacy=privacy_report(dp, privacy),
        fidelity=fidelity_report(cfg, [w for w, _ in fidelity], [q for _, q in fidelity]),
        params_model=params["total"],
        synthetic=[(f.synthetic, f.labels) for f in finished] if finished else None,
    )


def run_generative(
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
    client's `finish_client`."""
    gen_clients, weights, history = train_generative(
        method, clients, n_classes, cfg, dp, seed, checkpoint, execution
    )
    finished = [
        finish_client(client, data, weights, n_classes, cfg, head_cfg, seed)
        for data, client in progress(
            list(zip(clients, gen_clients)), desc="synthesize", unit="client"
        )
    ]
    return generative_outcome(
        method,
        clients[0].x_train.shape[1],
        n_classes,
        cfg,
        dp,
        history,
        [(f.wasserstein, f.quality) for f in finished],
        [c.privacy() for c in gen_clients],
        finished,
    )
