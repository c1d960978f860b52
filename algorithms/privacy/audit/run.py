"""The audit itself: read a finished run, rerun its training with canaries in one client,
attack what that client releases, and check the bounds against the spent epsilon (see the
package docstring)."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.methods import registry
from algorithms.methods.generative import train_generative
from algorithms.methods.synthesis import synthesize
from algorithms.privacy.audit.canaries import (
    canary_bound,
    canary_label,
    make_canaries,
    with_canaries,
)
from algorithms.privacy.audit.stats import attack_summary
from algorithms.privacy.config import DPConfig
from algorithms.privacy.generative_config import GenerativeConfig
from algorithms.privacy.opacus_compat import check_opacus
from data.clients import ClientData, client_datasets
from data.database import DatabaseError, load_database
from data.features import squash
from data.partition import load_split
from data.split_config import SplitError
from utils.cli import flag, flag_name
from utils.io import read_json, sha256_file
from utils.results import CONFIG_FILE, ResultsError, read_metrics
from utils.seeding import AUDIT, CANARIES, LATENT, MEMBERS, derive_seed, generator

ATTACKS = {
    "decoder_client": "the target client's decoder/generator as sent in the last round",
    "decoder_global": "the final global (averaged) decoder/generator",
    "synthetic_dcr": "the target client's synthetic data (distance to closest record)",
}


class AuditError(ValueError):
    """Bad input to the audit (the message names the file or flag)."""


class PrivacyViolation(RuntimeError):
    """An empirical lower bound above the spent epsilon: the privacy accounting has a bug."""


@dataclass(frozen=True)
class AuditConfig:
    """What the audit does; each field carries its flag of the audit's command line.
    `target_client` None: the client with the fewest training records (the most exposed);
    `canary_label` None: see canaries.canary_label."""

    target_client: int | None = field(
        default=None,
        metadata=flag(
            "--target_client",
            type=int,
            help="id of the client whose training gets the canaries. Default: the smallest client",
        ),
    )
    n_canaries: int = field(
        default=64,
        metadata=flag(
            "--n_canaries",
            help="canaries inserted (members); as many are held out. Default: {default}",
        ),
    )
    canary_label: int | None = field(
        default=None,
        metadata=flag(
            "--canary_label",
            type=int,
            help="class index of the canaries. Default: the target client's rarest class "
            "(ties: the federation's rarest)",
        ),
    )
    canary_records: int = field(
        default=1,
        metadata=flag(
            "--canary_records",
            help="records of each canary patient (copies of its canary; a new patient where "
            "the data has patient ids). Default: {default} (record canaries)",
        ),
    )
    n_latent: int = field(
        default=2048,
        metadata=flag(
            "--n_latent", help="latent draws of the reconstruction attack. Default: {default}"
        ),
    )
    confidence: float = field(
        default=0.95,
        metadata=flag(
            "--confidence", help="confidence of the epsilon lower bounds. Default: {default}"
        ),
    )

    def __post_init__(self) -> None:
        name = functools.partial(flag_name, self)
        if self.n_canaries < 1:
            raise ValueError(f"{name('n_canaries')} must be >= 1, got {self.n_canaries}")
        if self.canary_records < 1:
            raise ValueError(f"{name('canary_records')} must be >= 1, got {self.canary_records}")
        if self.n_latent < 1:
            raise ValueError(f"{name('n_latent')} must be >= 1, got {self.n_latent}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"{name('confidence')} must lie in (0, 1), got {self.confidence}")


@torch.no_grad()
def reconstruction_scores(
    *,
    decode: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    latent_dim: int,
    n_latent: int,
    seed: int,
) -> np.ndarray:
    """Minus each candidate's best reconstruction by the released model: min over `n_latent`
    prior draws z of mean_d (x - decode(z, y))^2. The same draws serve every candidate.

    Args:
        decode: the released model, called as (z, onehot).
        x: the candidates' embeddings (model space).
        y: their labels.
        n_classes: the number of classes.
        latent_dim: the size of z.
        n_latent: the prior draws tried per candidate.
        seed: the draws' seed.
    """
    z = torch.randn(n_latent, latent_dim, generator=generator(seed))
    x_t = torch.as_tensor(x, dtype=torch.float32)
    scores = np.empty(len(x))
    for label in np.unique(y):
        onehot = F.one_hot(torch.full((n_latent,), int(label)), n_classes).float()
        recon = decode(z, onehot)
        rows = np.flatnonzero(y == label)
        dist = torch.cdist(x_t[rows], recon).pow(2) / x.shape[1]
        scores[rows] = -dist.min(dim=1).values.double().numpy()
    return scores


def dcr_scores(
    x: np.ndarray, y: np.ndarray, synthetic: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Minus each candidate's distance to the closest synthetic record of its label (of any
    label when none was generated)."""
    scores = np.empty(len(x))
    syn = torch.as_tensor(synthetic, dtype=torch.float32)
    x_t = torch.as_tensor(x, dtype=torch.float32)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        pool = syn[torch.as_tensor(labels == label)] if (labels == label).any() else syn
        scores[rows] = -torch.cdist(x_t[rows], pool).min(dim=1).values.double().numpy()
    return scores


@dataclass(frozen=True)
class RunSetup:
    """What the audit reads from a finished run directory."""

    run_dir: Path
    method: str
    seed: int
    generative: GenerativeConfig
    dp: DPConfig
    clients: list[ClientData]
    n_classes: int
    metrics: dict


def load_run(
    run_dir: str | Path, database_root: str | None = None, split_file: str | None = None
) -> RunSetup:
    """A finished dpcvae / dpcgan run: its configuration, metrics and client data (from the
    database and split file recorded in config.json, unless given)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AuditError(f"{run_dir}: no such run directory")
    try:
        metrics = read_metrics(run_dir)
        config = read_json(run_dir / CONFIG_FILE)
    except (ResultsError, FileNotFoundError, ValueError) as err:
        raise AuditError(f"{run_dir}: not a finished run ({err})") from None
    method = config.get("method")
    audited = registry.with_flow("generative")
    if method not in audited:
        names = ", ".join(audited)
        raise AuditError(f"{run_dir}: method {method!r} has nothing to audit ({names})")
    try:
        gen_cfg = GenerativeConfig(**config["generative"])
        dp_cfg = DPConfig(**config["dp"])
        if dp_cfg.enabled:
            check_opacus()
        seed = int(config["seed"])
        root = database_root or config["database_root"]
        split_path = split_file or config["split_file"]
    except (KeyError, TypeError, ValueError) as err:
        raise AuditError(f"{run_dir / CONFIG_FILE}: unusable configuration ({err})") from None
    try:
        db = load_database(root)
        split = load_split(split_path, db)
    except (DatabaseError, SplitError) as err:
        raise AuditError(str(err)) from None
    recorded = config.get("split_sha256")
    if recorded is not None and sha256_file(split_path) != recorded:
        raise AuditError(f"{split_path}: not the split file this run used (sha256 differs)")
    return RunSetup(
        run_dir,
        method,
        seed,
        gen_cfg,
        dp_cfg,
        client_datasets(db, split),
        db.n_classes,
        metrics,
    )


def _reported_epsilon(metrics: dict, client_id: int) -> float | None:
    privacy = metrics.get("privacy") or {}
    for c in privacy.get("clients", []):
        if c.get("id") == client_id:
            return c.get("epsilon")
    return None


def run_audit(setup: RunSetup, cfg: AuditConfig) -> dict:
    """Rerun the training with canaries in the target client and attack its releases; the
    "audit" block of metrics.json (not yet checked: see `check_bounds`)."""
    clients, gen_cfg = setup.clients, setup.generative
    ids = [c.id for c in clients]
    target_id = (
        min(clients, key=lambda c: (c.n_train, c.id)).id
        if cfg.target_client is None
        else cfg.target_client
    )
    if target_id not in ids:
        raise AuditError(f"--target_client {target_id}: the run has clients {ids}")
    index = ids.index(target_id)
    target = clients[index]
    label = (
        canary_label(clients, index, setup.n_classes)
        if cfg.canary_label is None
        else cfg.canary_label
    )
    if not 0 <= label < setup.n_classes:
        raise AuditError(f"--canary_label {label}: classes are 0..{setup.n_classes - 1}")

    start = time.perf_counter()
    k = cfg.n_canaries
    seed = derive_seed(setup.seed, AUDIT)
    temp = gen_cfg.squash_temperature
    real = np.concatenate([c.x_train[c.y_train == label] for c in clients])
    avoid = squash(real, temp).mean(axis=0) - 0.5 if len(real) else None
    canaries, design = make_canaries(
        2 * k, target.x_train.shape[1], derive_seed(seed, CANARIES), avoid
    )
    order = np.random.default_rng(derive_seed(seed, MEMBERS)).permutation(2 * k)
    is_member = np.zeros(2 * k, dtype=bool)
    is_member[order[:k]] = True
    audited = list(clients)
    audited[index] = with_canaries(target, canaries[is_member], label, cfg.canary_records)

    gen_clients, weights, _ = train_generative(
        method=setup.method,
        clients=audited,
        n_classes=setup.n_classes,
        cfg=gen_cfg,
        dp=setup.dp,
        seed=setup.seed,
    )
    client = gen_clients[index]
    dim = target.x_train.shape[1]
    x = squash(canaries, temp)  # the space the models see
    y = np.full(2 * k, label)

    scores = {}
    for name, released in (
        ("decoder_client", client.released_weights()),
        ("decoder_global", weights),
    ):
        model = client.released_model(released, dim, setup.n_classes, gen_cfg)
        scores[name] = reconstruction_scores(
            decode=model,
            x=x,
            y=y,
            n_classes=setup.n_classes,
            latent_dim=gen_cfg.latent_dim,
            n_latent=cfg.n_latent,
            seed=derive_seed(seed, LATENT),
        )
    # the client's synthetic data, as finish_client draws it
    synthetic, labels = synthesize(
        client=client,
        data=audited[index],
        weights=weights,
        n_classes=setup.n_classes,
        cfg=gen_cfg,
        seed=setup.seed,
    )
    scores["synthetic_dcr"] = dcr_scores(x, y, synthetic, labels)

    privacy = client.privacy()
    unit = privacy.get("unit", "record")
    # a canary's bound: the accountant's at the patient unit, else its records' group bound
    k_group = 1 if unit == "patient" else cfg.canary_records
    spent, delta = canary_bound(privacy["epsilon"], setup.dp.delta, k_group)
    reported = canary_bound(_reported_epsilon(setup.metrics, target_id), setup.dp.delta, k_group)
    # Bonferroni over the attacks too: the largest of their bounds holds at `confidence`
    each = 1.0 - (1.0 - cfg.confidence) / len(scores)
    attacks = {
        name: {"target": ATTACKS[name], **attack_summary(s[is_member], s[~is_member], delta, each)}
        for name, s in scores.items()
    }
    return {
        "method": setup.method,
        "target_client": target_id,
        "n_train": target.n_train,
        "n_canaries": k,
        "n_nonmembers": k,
        "canary": {"label": label, "design": design, "records": cfg.canary_records},
        "unit": unit,  # the run's DP unit; each canary is a record or a patient of `records`
        "canary_unit": "patient" if cfg.canary_records > 1 or unit == "patient" else "record",
        "group_k": k_group,
        "config": asdict(cfg),
        "dp_enabled": setup.dp.enabled,
        "delta": delta,
        "confidence": cfg.confidence,
        "confidence_per_attack": each,
        "epsilon_spent": spent,  # per canary; None: its bound says nothing (delta >= 1)
        "epsilon_reported": reported[0],
        "attacks": attacks,
        "eps_lb_max": max(a["eps_lb"] for a in attacks.values()),
        "wall_seconds": time.perf_counter() - start,
    }


def check_bounds(audit: dict) -> None:
    """Raise PrivacyViolation when a lower bound exceeds the epsilon the client spent (in the
    audited training, or as the run reported it): the accounting would have a bug."""
    if not audit["dp_enabled"]:
        return
    for source in ("epsilon_spent", "epsilon_reported"):
        spent = audit[source]
        if spent is None:
            continue
        for name, attack in audit["attacks"].items():
            if attack["eps_lb"] > spent:
                raise PrivacyViolation(
                    f"attack {name}: empirical epsilon lower bound {attack['eps_lb']:.4f} "
                    f"exceeds the {source.replace('_', ' ')} {spent:.4f} of client "
                    f"{audit['target_client']}: the privacy accounting is wrong"
                )


def format_report(audit: dict, checked: bool = True) -> str:
    """The audit as a short plain-text table (`checked`: the bounds passed `check_bounds`)."""
    records, unit, k = audit["canary"]["records"], audit["canary_unit"], audit["group_k"]
    each = f"canary patients of {records} records" if records > 1 else "canaries"
    lines = [
        f"{audit['method']}: client {audit['target_client']} ({audit['n_train']} records + "
        f"{audit['n_canaries']} {each} of class {audit['canary']['label']}; "
        f"{audit['n_nonmembers']} held out), DP {'on' if audit['dp_enabled'] else 'OFF'}, "
        f"bounds per {unit}",
        f"{'attack':<16} {'AUC':>6} {'TPR@1%':>7} {'TPR@10%':>8} {'eps_lb':>7} {'ceiling':>8}",
    ]
    for name, a in audit["attacks"].items():
        lines.append(
            f"{name:<16} {a['auc']:6.3f} {a['tpr_at_fpr_0.01']:7.3f} {a['tpr_at_fpr_0.1']:8.3f} "
            f"{a['eps_lb']:7.3f} {a['eps_lb_ceiling']:8.3f}"
        )
    conf = f"{100 * audit['confidence']:g}%"
    if audit["dp_enabled"]:
        reported, spent = audit["epsilon_reported"], audit["epsilon_spent"]
        reported = "n/a" if reported is None else f"{reported:.4f}"
        spent = "none (group bound: delta >= 1)" if spent is None else f"{spent:.4f}"
        how = f", group bound of {k} records of the run's per-{audit['unit']}" if k > 1 else ""
        lines.append(
            f"spent epsilon per {unit} (delta {audit['delta']:g}{how}): {spent} in the "
            f"audited training, {reported} reported by the run"
        )
        if checked:
            lines.append(
                f"check: largest lower bound ({conf} confidence) {audit['eps_lb_max']:.4f} <= "
                f"spent epsilon: OK"
            )
    else:
        lines.append(f"DP disabled: no guarantee; lower bounds at {conf} confidence")
    return "\n".join(lines)
