"""The end of a generative run: each client's synthetic set, heads and fidelity
(`finish_client`), and the global synthetic head of the released model with its report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from algorithms.evaluation.downstream import JOINT_WEIGHTS, head_probs, label_prior
from algorithms.evaluation.heads import HeadConfig, predict_proba, train_head
from algorithms.evaluation.protocol import ClientProbs
from algorithms.federation.aggregation import StateDict
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData, pooled_test
from data.features import squash, unsquash
from utils.device import one_torch_thread
from utils.metrics import prdc, sinkhorn_wasserstein
from utils.progress import progress
from utils.seeding import (
    GLOBAL_HEAD,
    GLOBAL_SAMPLE,
    JOINT_HEAD,
    LABELS,
    LOCAL_HEAD,
    SAMPLE,
    SYNTHETIC_HEAD,
    derive_seed,
    generator,
    private_generator,
    private_numpy_rng,
)


class Sampler(Protocol):
    """Sampling from what was released (DPClient: the global decoder or generator;
    fedpft.PFTClient: the pooled Gaussians; where no client is, generative.ReleasedSampler and
    fedpft.PooledSampler)."""

    def sample(self, weights: StateDict, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """Synthetic embeddings (model space), one per label."""
        ...

    def can_sample(self, weights: StateDict) -> np.ndarray:
        """Per class, whether the released model can sample it (bool)."""
        ...


class ClientSampler(Sampler, Protocol):
    """What the end of a generative run needs of a client: a Sampler on the client's `device`,
    whose private draws are keyed by its `secret` (None: seeded)."""

    device: torch.device
    secret: bytes | None


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
    *,
    client: ClientSampler,
    data: ClientData,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A client's synthetic set from the global model (model space) and its labels, as the
    protocol draws them (`--synthetic_labels`, `--generated_factor`), from the client's private
    streams (run seed `seed`, or its secret key under secure noise), without the classes that
    the global model cannot sample.

    Args:
        client: the client's sampler (its device and secret).
        data: the client's data (its training labels set the counts).
        weights: the released model.
        n_classes: the number of classes.
        cfg: the synthesis settings.
        seed: the run seed.
    """
    rng = private_numpy_rng(seed, LABELS, data.id, secret=client.secret)
    counts = synthetic_label_counts(data.y_train, n_classes, cfg, rng)
    labels = np.repeat(np.arange(n_classes), np.where(client.can_sample(weights), counts, 0))
    latent = private_generator(seed, SAMPLE, data.id, secret=client.secret, device=client.device)
    with one_torch_thread():  # the same draws whatever --num_threads (sums in one order)
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
    synthetic_acc: float  # the synthetic head alone on the client's real test data (nan: empty)
    majority: float  # the share of the most frequent class in the client's test data
    joint: dict[float, ClientProbs]  # heads on real + synthetic data, by synthetic weight

    def fidelity(self) -> dict[str, float]:
        """What leaves the client of its synthetic set: fidelity and synthetic-only accuracy."""
        return {
            "wasserstein": self.wasserstein,
            **self.quality,
            "synthetic_acc": self.synthetic_acc,
            "majority": self.majority,
            "synthetic_empty": float(len(self.labels) == 0),
            "n_test": float(len(self.local.test)),
        }


def finish_client(
    *,
    client: ClientSampler,
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
    simulation's second evaluation), or None. An empty synthetic set (the global model samples
    none of the client's classes) gives NaN fidelity and synthetic-only accuracy, and the local
    head in the global model's place (the mixed rows are the local head's), so the run's other
    rows are kept.

    Args:
        client: the client's sampler.
        data: the client's data.
        weights: the released model.
        n_classes: the number of classes.
        cfg: the synthesis settings.
        head_cfg: the heads' settings.
        seed: the run seed.
        pooled_x: every client's test data (None: no pooled evaluation).
    """
    synthetic, labels = synthesize(
        client=client, data=data, weights=weights, n_classes=n_classes, cfg=cfg, seed=seed
    )
    real = squash(data.x_train, cfg.squash_temperature)
    wasserstein = sinkhorn_wasserstein(real, synthetic, device=client.device.type)
    quality = prdc(real, synthetic)
    x_syn = unsquash(synthetic, cfg.squash_temperature)
    head_real = train_head(
        x=data.x_train,
        y=data.y_train,
        n_classes=n_classes,
        cfg=head_cfg,
        seed=derive_seed(seed, LOCAL_HEAD, data.id),
        device=client.device,
    )
    own_prior = label_prior(data.y_train, n_classes)
    local = head_probs(head_real, data, pooled_x, own_prior)
    if len(labels):
        head_syn = train_head(
            x=x_syn,
            y=labels,
            n_classes=n_classes,
            cfg=head_cfg,
            seed=derive_seed(seed, SYNTHETIC_HEAD, data.id),
            device=client.device,
        )
        global_ = head_probs(head_syn, data, pooled_x, label_prior(labels, n_classes))
    else:
        global_ = local  # nothing released to add: every mix of the two is the local head
    return FinishedClient(
        local=local,
        global_=global_,
        wasserstein=wasserstein,
        quality=quality,
        synthetic=synthetic,
        labels=labels,
        synthetic_acc=accuracy(global_.test, data.y_test) if len(labels) else float("nan"),
        majority=majority_share(data.y_test),
        joint=joint_heads(
            data=data,
            x_syn=x_syn,
            y_syn=labels,
            n_classes=n_classes,
            head_cfg=head_cfg,
            seed=seed,
            device=client.device,
            pooled_x=pooled_x,
        )
        | {0.0: local},
    )


def joint_heads(
    *,
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
    each positive weight of JOINT_WEIGHTS (a synthetic record counts w times a real one).

    Args:
        data: the client's data (its real training records).
        x_syn: its synthetic embeddings.
        y_syn: their labels.
        n_classes: the number of classes.
        head_cfg: the heads' settings.
        seed: the heads' seed.
        device: where the heads train.
        pooled_x: every client's test data (None: no pooled evaluation).
    """
    x = np.concatenate([data.x_train, x_syn])
    y = np.concatenate([data.y_train, y_syn])
    prior = label_prior(data.y_train, n_classes)
    out = {}
    for w in JOINT_WEIGHTS:
        if w == 0:
            continue
        weight = np.concatenate([np.ones(len(data.y_train)), np.full(len(y_syn), w)])
        head = train_head(
            x=x,
            y=y,
            n_classes=n_classes,
            cfg=head_cfg,
            seed=derive_seed(seed, JOINT_HEAD, data.id),
            device=device,
            sample_weight=weight,
        )
        out[w] = head_probs(head, data, pooled_x, prior)
    return out


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The accuracy of argmax predictions (nan without data)."""
    return float((probs.argmax(1) == y).mean()) if len(y) else float("nan")


def majority_share(y: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent class of `y` (the majority-class
    rate: what a head that has learnt the label prior only scores; nan without data). Not
    chance, which is 1 / n_classes."""
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


# The server's synthetic set from the global model for the global synthetic-only accuracy: this
# many samples per class (public: it depends on nothing private).
GLOBAL_SYNTHETIC_PER_CLASS = 500


def global_synthetic_head(
    *,
    sampler: Sampler,
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> torch.nn.Module | None:
    """A head trained on a class-balanced synthetic set from the released model alone
    (GLOBAL_SYNTHETIC_PER_CLASS per class it can sample, run seed `seed`), where the released
    model is (the server): what the shared model is worth by itself, tested on every client's
    real test data (`global_synthetic_report`). None when it can sample no class.

    Args:
        sampler: sampling from the released model where the server is.
        weights: the released model.
        n_classes: the number of classes.
        cfg: the synthesis settings (squash temperature).
        head_cfg: the head's settings.
        seed: the run seed.
    """
    labels = np.repeat(np.flatnonzero(sampler.can_sample(weights)), GLOBAL_SYNTHETIC_PER_CLASS)
    if not len(labels):
        return None
    x = sampler.sample(weights, labels, generator(derive_seed(seed, GLOBAL_SAMPLE)))
    x = unsquash(x, cfg.squash_temperature)
    return train_head(
        x=x, y=labels, n_classes=n_classes, cfg=head_cfg, seed=derive_seed(seed, GLOBAL_HEAD)
    )


def correct_count(head: torch.nn.Module | None, data: ClientData) -> int | None:
    """How many of the client's test records `head` classifies right (a client reports this);
    None without a head (the released model samples no class)."""
    if head is None:
        return None
    return int((predict_proba(head, data.x_test).argmax(1) == data.y_test).sum())


def at_chance(acc: float, chance: float, n: int) -> bool:
    """Whether an accuracy on `n` test records is within noise of `chance`: below chance plus
    three binomial standard errors."""
    return n > 0 and acc <= chance + 3.0 * math.sqrt(chance * (1.0 - chance) / n)


def global_synthetic_report(correct: list[int | None], n_test: list[int], n_classes: int) -> dict:
    """The global synthetic-only accuracy on the pooled test data (from the clients' correct
    counts), against chance 1 / n_classes (the head never saw the clients' label prior).
    `empty` (only then): the released model samples no class (no head; `acc` None)."""
    n = int(sum(n_test))
    chance = 1.0 / n_classes
    counts = [c for c in correct if c is not None]
    empty = len(counts) < len(correct)
    acc = None if empty else (sum(counts) / n if n else float("nan"))
    return {
        "acc": acc,
        "n_test": n,
        "chance": chance,
        "per_class": GLOBAL_SYNTHETIC_PER_CLASS,
        "at_chance": False if acc is None else at_chance(acc, chance, n),
        **({"empty": True} if empty else {}),
    }


def finish_clients(
    *,
    samplers: Sequence[ClientSampler],
    clients: list[ClientData],
    weights: StateDict,
    n_classes: int,
    cfg: GenerativeConfig,
    head_cfg: HeadConfig,
    seed: int,
) -> list[FinishedClient]:
    """`finish_client` for every client, in process.

    Args:
        samplers: every client's sampler, in client order.
        clients: every client's data.
        weights: the released model.
        n_classes: the number of classes.
        cfg: the synthesis settings.
        head_cfg: the heads' settings.
        seed: the run seed.
    """
    pairs = list(zip(clients, samplers))
    pooled_x, _ = pooled_test(clients)
    return [
        finish_client(
            client=client,
            data=data,
            weights=weights,
            n_classes=n_classes,
            cfg=cfg,
            head_cfg=head_cfg,
            seed=seed,
            pooled_x=pooled_x,
        )
        for data, client in progress(pairs, desc="synthesize", unit="client")
    ]


def pooled_synthetic_report(
    head: torch.nn.Module | None, clients: list[ClientData], n_classes: int
) -> dict:
    """`global_synthetic_report` in process: every client's correct count of `head`."""
    return global_synthetic_report(
        [correct_count(head, c) for c in clients], [len(c.y_test) for c in clients], n_classes
    )
