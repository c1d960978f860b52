"""A generative run from end to end (`run_generative`: train, then each client's end of run)
and what it reports: sampling from released weights (`ReleasedSampler`), fidelity, the
outcome and the privacy block. The clients and the federated training: generative.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algorithms import presets
from algorithms.evaluation.heads import HeadConfig
from algorithms.evaluation.protocol import Outcome
from algorithms.federation.aggregation import StateDict
from algorithms.methods.generative import client_type, count_parameters, train_generative
from algorithms.methods.synthesis import (
    FinishedClient,
    at_chance,
    finish_clients,
    global_synthetic_head,
    pooled_synthetic_report,
)
from algorithms.privacy.accounting import NOT_COVERED, privacy_report
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from data.clients import ClientData
from utils.checkpoint import RoundCheckpoint
from utils.cli import flag_name
from utils.device import ON_CPU, Execution


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
