"""The federation of the DP generative methods (dpcvae.py, dpcgan.py) and the end of their run.

Each client trains its generative model with DP-SGD; each round only the decoder (CVAE) or
generator (CGAN) leaves the client, and the server averages them weighted by training size.
After the last round every client runs `finish_client` where its data lives: it samples a
synthetic dataset from the global model, trains a head on its real data and one on the synthetic
data, and measures the fidelity of the synthetic data; the lambda protocol (evaluation.py) then
mixes the two heads. The same functions run in process, under Flower and in the audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from algorithms.evaluation.downstream import JOINT_WEIGHTS, label_prior
from algorithms.evaluation.heads import HeadConfig, predict_proba, train_head
from algorithms.evaluation.protocol import ClientProbs, Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import run_federation
from algorithms.federation.vectorized import run_vectorized
from algorithms.methods.dpcgan import CGANClient
from algorithms.methods.dpcvae import CVAEClient
from algorithms.privacy.accounting import NOT_COVERED, PRESET_NOT_COVERED, privacy_report
from algorithms.privacy.config import DPConfig
from algorithms.privacy.dp_client import DPClient, GenerativeConfig
from data.clients import ClientData, pooled_test
from data.features import squash, unsquash
from utils.checkpoint import RoundCheckpoint
from utils.device import ON_CPU, Execution, one_torch_thread
from utils.metrics import prdc, sinkhorn_wasserstein
from utils.progress import progress
from utils.seeding import (
    GENERATIVE_CLIENT,
    GENERATIVE_GLOBAL,
    GLOBAL_HEAD,
    GLOBAL_SAMPLE,
    JOINT_HEAD,
    LABELS,
    LOCAL_HEAD,
    SAMPLE,
    SAMPLING,
    SYNTHETIC_HEAD,
    derive_seed,
    generator,
    private_generator,
    private_numpy_rng,
)


def client_type(method: str) -> type[CVAEClient] | type[CGANClient]:
    """The client class of a generative method, from its registry entry (looked up when called:
    the registry imports this module)."""
    from algorithms.methods import registry

    if method not in registry.with_flow("generative"):
        names = ", ".join(registry.with_flow("generative"))
        raise ValueError(f"{method!r} is not a generative method ({names})")
    return registry.get(method).client


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
    secret: bytes | None = None,
    device: str = "cpu",
) -> list[DPClient]:
    """One client object per data set, seeded by the run seed, the method and the client id,
    its tensors and generators on `device`. `secret`: a site's own key for its secure noise
    (None: each client draws its own)."""
    cls = client_type(method)
    return [
        cls(
            c,
            n_classes,
            cfg,
            dp,
            derive_seed(seed, method, GENERATIVE_CLIENT, c.id),
            secret,
            device,
        )
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
    gen_clients = make_clients(method, clients, n_classes, cfg, dp, seed, device=execution.device)
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
    with one_torch_thread() as threads:
        weights, history = run_federation(
            gen_clients,
            weights,
            cfg.n_rounds,
            **rounds,
            desc=method,
            workers=1 if execution.device != "cpu" else min(threads, len(gen_clients)),
            after_round=checkpoint.saver(gen_clients) if checkpoint is not None else None,
        )
    return gen_clients, weights, history


class Sampler(Protocol):
    """What the end of a generative run needs of a client: sampling from what was released
    (DPClient: the global decoder or generator; fedpft.PFTClient: the pooled Gaussians), on
    the client's `device`."""

    device: torch.device

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """Synthetic embeddings (model space), one per label."""
        ...

    def can_sample(self, weights: StateDict) -> np.ndarray:
        """Per class, whether the released model can sample it (bool)."""
        ...


def synthetic_label_counts(
    y: np.ndarray, n_classes: int, cfg: GenerativeConfig, rng: np.random.Generator
) -> np.ndarray:
    """Samples to generate per class: the client's own counts x factor (`match`, as the paper),
    or its total x factor spread evenly over all classes (`uniform`) or over the classes the
    client holds (`balanced`: its rare classes get as many samples as its frequent ones)."""
    own = np.bincount(y, minlength=n_classes)
    if cfg.synthetic_labels == "match":
        return (own * cfg.generated_factor).astype(np.int64)
    classes = np.arange(n_classes) if cfg.synthetic_labels == "uniform" else np.flatnonzero(own)
    total = int(len(y) * cfg.generated_factor)
    counts = np.zeros(n_classes, dtype=np.int64)
    counts[classes] = total // len(classes)
    counts[rng.choice(classes, size=total % len(classes), replace=False)] += 1
    return counts


def synthesize(
    client: Sampler,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A client's synthetic set from the global model (model space) and its labels, as the
    protocol draws them (`--synthetic_labels`, `--generated_factor`), from the client's private
    streams (run seed `seed`, or its secret key under secure noise), without the classes that
    the global model cannot sample."""
    rng = private_numpy_rng(seed, LABELS, data.id, secret=client.secret)
    counts = synthetic_label_counts(data.y_train, n_classes, cfg, rng)
    labels = np.repeat(np.arange(n_classes), np.where(client.can_sample(weights), counts, 0))
    latent = private_generator(seed, SAMPLE, data.id, secret=client.secret, device=client.device)
    synthetic = client.sample(weights, labels, latent)
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
    synthetic_acc: float  # the synthetic head alone on the client's real test data
    chance: float  # the share of the most frequent class in the client's test data
    joint: dict[float, ClientProbs]  # heads on real + synthetic data, by synthetic weight

    def fidelity(self) -> dict[str, float]:
        """What leaves the client of its synthetic set: fidelity and synthetic-only accuracy."""
        return {
            "wasserstein": self.wasserstein,
            **self.quality,
            "synthetic_acc": self.synthetic_acc,
            "chance": self.chance,
            "n_test": float(len(self.local.test)),
        }


def finish_client(
    client: Sampler,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
    pooled_x: np.ndarray | None = None,
) -> FinishedClient:
    """Run where the client's data lives: synthesize from the global model, fit a head on real
    data, one on synthetic data and the joint heads on both (on the client's device), and
    measure the fidelity of the synthetic embeddings. `pooled_x`: every client's test data (a
    simulation's second evaluation), or None."""
    synthetic, labels = synthesize(client, data, weights, n_classes, cfg, seed)
    real = squash(data.x_train, cfg.squash_temperature)
    wasserstein = sinkhorn_wasserstein(real, synthetic, device=client.device.type)
    quality = prdc(real, synthetic)
    x_syn = unsquash(synthetic, cfg.squash_temperature)
    head_syn = train_head(
        x_syn,
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
    own_prior = label_prior(data.y_train, n_classes)
    local = head_probs(head_real, data, pooled_x, own_prior)
    global_ = head_probs(head_syn, data, pooled_x, label_prior(labels, n_classes))
    return FinishedClient(
        local=local,
        global_=global_,
        wasserstein=wasserstein,
        quality=quality,
        synthetic=synthetic,
        labels=labels,
        synthetic_acc=accuracy(global_.test, data.y_test),
        chance=majority_share(data.y_test),
        joint=joint_heads(data, x_syn, labels, n_classes, head_cfg, seed, client.device, pooled_x)
        | {0.0: local},
    )


def head_probs(
    head: torch.nn.Module, data: ClientData, pooled_x: np.ndarray | None, prior: np.ndarray
) -> ClientProbs:
    """A head's probabilities on the client's validation, test and pooled test data."""
    pooled = None if pooled_x is None else predict_proba(head, pooled_x)
    return ClientProbs(
        predict_proba(head, data.x_val), predict_proba(head, data.x_test), pooled, prior
    )


def joint_heads(
    data: ClientData,
    x_syn: np.ndarray,
    y_syn: np.ndarray,
    n_classes: int,
    head_cfg: HeadConfig,
    seed: int,
    device: torch.device | str,
    pooled_x: np.ndarray | None,
) -> dict[float, ClientProbs]:
    """The downstream step's joint heads: one head on the client's real plus synthetic data for
    each positive weight of JOINT_WEIGHTS (a synthetic record counts w times a real one)."""
    x = np.concatenate([data.x_train, x_syn])
    y = np.concatenate([data.y_train, y_syn])
    prior = label_prior(data.y_train, n_classes)
    out = {}
    for w in JOINT_WEIGHTS:
        if w == 0:
            continue
        weight = np.concatenate([np.ones(len(data.y_train)), np.full(len(y_syn), w)])
        head = train_head(
            x, y, n_classes, head_cfg, derive_seed(seed, JOINT_HEAD, data.id), device, weight
        )
        out[w] = head_probs(head, data, pooled_x, prior)
    return out


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The accuracy of argmax predictions (nan without data)."""
    return float((probs.argmax(1) == y).mean()) if len(y) else float("nan")


def majority_share(y: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent class of `y` (chance level of a head
    that has learnt the label prior only; nan without data)."""
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


# The server's synthetic set from the global model for the global synthetic-only accuracy: this
# many samples per class (public: it depends on nothing private).
GLOBAL_SYNTHETIC_PER_CLASS = 500


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


def global_synthetic_head(
    sampler: Sampler,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> torch.nn.Module:
    """A head trained on a class-balanced synthetic set from the released model alone
    (GLOBAL_SYNTHETIC_PER_CLASS per class it can sample, run seed `seed`), where the released
    model is (the server): what the shared model is worth by itself, tested on every client's
    real test data (`global_synthetic_report`)."""
    labels = np.repeat(np.flatnonzero(sampler.can_sample(weights)), GLOBAL_SYNTHETIC_PER_CLASS)
    x = sampler.sample(weights, labels, generator(derive_seed(seed, GLOBAL_SAMPLE)))
    x = unsquash(x, cfg.squash_temperature)
    return train_head(x, labels, n_classes, head_cfg, derive_seed(seed, GLOBAL_HEAD))


def correct_count(head: torch.nn.Module, data: ClientData) -> int:
    """How many of the client's test records `head` classifies right (a client reports this)."""
    return int((predict_proba(head, data.x_test).argmax(1) == data.y_test).sum())


def at_chance(acc: float, chance: float, n: int) -> bool:
    """Whether an accuracy on `n` test records is within noise of `chance`: below chance plus
    three binomial standard errors."""
    return n > 0 and acc <= chance + 3.0 * math.sqrt(chance * (1.0 - chance) / n)


def global_synthetic_report(correct: list[int], n_test: list[int], n_classes: int) -> dict:
    """The global synthetic-only accuracy on the pooled test data (from the clients' correct
    counts), against chance 1 / n_classes (the head never saw the clients' label prior)."""
    n = int(sum(n_test))
    acc = sum(correct) / n if n else float("nan")
    chance = 1.0 / n_classes
    return {
        "acc": acc,
        "n_test": n,
        "chance": chance,
        "per_class": GLOBAL_SYNTHETIC_PER_CLASS,
        "at_chance": at_chance(acc, chance, n),
    }


FIDELITY_NUMBERS = (
    "wasserstein",
    "precision",
    "recall",
    "density",
    "coverage",
    "synthetic_acc",
    "chance",
)


def fidelity_report(
    cfg: GenerativeConfig, per_client: list[dict[str, float]], global_synthetic: dict | None
) -> dict:
    """The `fidelity` block of metrics.json from the clients' `FinishedClient.fidelity()` (in
    client order) and the global synthetic-only accuracy. `synthetic_at_chance`: the synthetic
    data is worth nothing for the task (per client, or the global model's), within noise;
    `synthetic_client_at_chance`: the per-client part of that (the global part is
    `global_synthetic["at_chance"]`), None when no client sent its test size (Flower). A
    Flower site whose policy keeps its fidelity statistics on training data sends none of them
    (its synthetic-only accuracy is a test metric and is sent): its values are None and the
    means are over the clients that sent them (None if none did)."""
    fidelity: dict = {"space": f"squashed (temperature {cfg.squash_temperature})"}
    for name in FIDELITY_NUMBERS:
        fidelity[name] = [c.get(name) for c in per_client]
        fidelity[f"{name}_mean"] = _mean_of_finite(fidelity[name])
    fidelity["synthetic_acc_client_chance"] = fidelity.pop("chance_mean")
    fidelity["client_chance"] = fidelity.pop("chance")
    fidelity["global_synthetic"] = global_synthetic
    n_test = int(sum(c.get("n_test", 0) for c in per_client))  # none under Flower: no counts
    per_client_at_chance = at_chance(
        fidelity["synthetic_acc_mean"], fidelity["synthetic_acc_client_chance"], n_test
    )
    fidelity["synthetic_client_at_chance"] = bool(per_client_at_chance) if n_test else None
    fidelity["synthetic_at_chance"] = bool(
        per_client_at_chance or (global_synthetic is not None and global_synthetic["at_chance"])
    )
    return fidelity


def _mean_of_finite(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def finish_clients(
    samplers: list[Sampler],
    clients: list[ClientData],
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> list[FinishedClient]:
    """`finish_client` for every client, in process."""
    pairs = list(zip(clients, samplers))
    pooled_x, _ = pooled_test(clients)
    return [
        finish_client(client, data, weights, n_classes, cfg, head_cfg, seed, pooled_x)
        for data, client in progress(pairs, desc="synthesize", unit="client")
    ]


def generative_outcome(
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
    sets)."""
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
    finished = finish_clients(gen_clients, clients, weights, n_classes, cfg, head_cfg, seed)
    dim = clients[0].x_train.shape[1]
    sampler = ReleasedSampler(method, dim, n_classes, cfg)
    head = global_synthetic_head(sampler, weights, n_classes, cfg, head_cfg, seed)
    return generative_outcome(
        count_parameters(method, dim, n_classes, cfg),
        cfg,
        history,
        [f.fidelity() for f in finished],
        dpsgd_privacy_report(dp, cfg, [c.privacy() for c in gen_clients]),
        pooled_synthetic_report(head, clients, n_classes),
        finished,
    )


def dpsgd_privacy_report(dp: DPConfig, cfg: GenerativeConfig, lines: list[dict]) -> dict:
    """The privacy block of a DP-SGD method (DP-CVAE, DP-CGAN): `--preset dp` adds its search
    to what is not covered."""
    extra = (PRESET_NOT_COVERED[cfg.preset],) if cfg.preset in PRESET_NOT_COVERED else ()
    return privacy_report(dp, lines, not_covered=(*NOT_COVERED, *extra))


def pooled_synthetic_report(
    head: torch.nn.Module, clients: list[ClientData], n_classes: int
) -> dict:
    """`global_synthetic_report` in process: every client's correct count of `head`."""
    return global_synthetic_report(
        [correct_count(head, c) for c in clients], [len(c.y_test) for c in clients], n_classes
    )
