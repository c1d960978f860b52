"""Empirical privacy audit of a finished dpcvae / dpcgan run: membership inference on canaries.

    python -m algorithms.audit RUN_DIR [--target_client ID] [--n_canaries K]

Reruns the run's federated training with its recorded settings and seed, with K canaries
inserted into one target client's training data (members), while K more canaries drawn the same
way stay out (non-members; which half goes in is random). Then it attacks what that client
releases. Every score is "higher = member":

- `decoder_client`: the client's decoder (DP-CGAN: generator) as it sent it in the last round
  (what the server sees). Score of a candidate (x, y): minus its best reconstruction,
  min_j mean_d (x - dec(z_j, y))^2 over `n_latent` prior draws z_j ~ N(0, I).
- `decoder_global`: the same test on the final averaged decoder (what every client receives).
- `synthetic_dcr`: the synthetic data the client generates from the final global decoder (the
  protocol's labels and count): minus the distance to the closest synthetic record of its label.

Canaries (`make_canaries`) are out-of-distribution records, exactly orthogonal to each other in
the models' space and chosen nearly orthogonal to the mean of the real records of their label.
All have one label: by default the target client's rarest class (ties: the federation's rarest),
so that the decoder's output for that label is fitted to the members and to little else. The
paper's loss (MSE averaged over dimensions + beta * B * KL) keeps the decoder close to a
class-conditional mean, so a member shows through its share of that mean: the test is sharp
for the client's own decoder and diluted by averaging in the global one.

Statistics. Each canary is one trial. Over every distinct score t: TPR(t) = #{members >= t} / K,
FPR(t) = #{non-members >= t} / K. An (epsilon, delta)-DP training bounds every test:
TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta. With one-sided
Clopper-Pearson bounds TPR_lo and FPR_hi at each t,

    eps_lb = max over t of log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo))

(at least 0) is a lower bound on the epsilon the training satisfies, at the given confidence:
every one-sided interval has level (1 - confidence) / (2 T A) for T thresholds and A attacks
(Bonferroni), so the largest bound of all attacks and thresholds holds at that confidence. The
intervals treat the canaries as independent trials, exact when each canary is trained in its
own run; with all canaries in one run it is the usual approximation of DP auditing (justified for
canaries included at random: Steinke, Nasr & Jagielski, 2023). `eps_lb_ceiling` is what a
perfect attack (TPR 1, FPR 0) would prove with this many canaries: no result can exceed it.

The bound must never exceed the epsilon the target client spent (its accountant in the audited
training, and the value the run reported): if it does, the accounting has a bug, and the audit
fails (exit status 1) without writing anything. Results go to metrics.json under "audit".
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from scipy.stats import beta as beta_dist
from scipy.stats import rankdata

from algorithms.aggregation import StateDict
from algorithms.generative import (
    GENERATIVE_METHODS,
    CVAEClient,
    GenerativeConfig,
    synthetic_label_counts,
    train_generative,
)
from algorithms.privacy import DPConfig
from data.clients import ClientData, client_datasets
from data.database import DatabaseError, load_database
from data.features import squash, standardize_records
from data.partition import SplitError, load_split
from models.cgan import Generator
from models.cvae import CVAE, decoder_state, load_decoder
from utils.cli import Parser
from utils.io import read_json, sha256_file
from utils.progress import set_quiet
from utils.results import CONFIG_FILE, ResultsError, read_metrics, write_metrics
from utils.seeding import (
    AUDIT,
    CANARIES,
    LABELS,
    LATENT,
    MEMBERS,
    SAMPLE,
    derive_seed,
    generator,
    seeded,
)

ATTACKS = {
    "decoder_client": "the target client's decoder/generator as sent in the last round",
    "decoder_global": "the final global (averaged) decoder/generator",
    "synthetic_dcr": "the target client's synthetic data (distance to closest record)",
}
LOW_FPRS = (0.01, 0.1)


class AuditError(ValueError):
    """Bad input to the audit (the message names the file or flag)."""


class PrivacyViolation(RuntimeError):
    """An empirical lower bound above the spent epsilon: the privacy accounting has a bug."""


@dataclass(frozen=True)
class AuditConfig:
    """What the audit does. `target_client` None: the client with the fewest training records
    (the most exposed); `canary_label` None: see `canary_label`."""

    target_client: int | None = None
    n_canaries: int = 64
    canary_label: int | None = None
    n_latent: int = 2048
    confidence: float = 0.95

    def __post_init__(self) -> None:
        checks = [
            (self.n_canaries >= 1, f"--n_canaries must be >= 1, got {self.n_canaries}"),
            (self.n_latent >= 1, f"--n_latent must be >= 1, got {self.n_latent}"),
            (
                0 < self.confidence < 1,
                f"--confidence must lie in (0, 1), got {self.confidence}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Statistics


def clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds on a binomial proportion from k successes in n trials
    (k may be an array): (lower, upper), each holding with probability at least 1 - alpha."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = np.where(k == 0, 0.0, beta_dist.ppf(alpha, k, n - k + 1))
        upper = np.where(k == n, 1.0, beta_dist.ppf(1 - alpha, k + 1, n - k))
    return lower, upper


def roc_counts(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, ...]:
    """Thresholds (every distinct score, descending) and, for each, the members and non-members
    whose score is >= it (true and false positives)."""
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]
    tp = len(members) - np.searchsorted(np.sort(members), thresholds, side="left")
    fp = len(nonmembers) - np.searchsorted(np.sort(nonmembers), thresholds, side="left")
    return thresholds, tp, fp


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """Probability that a member scores above a non-member, ties counting half (Mann-Whitney U
    from the members' ranks among all scores)."""
    ranks = rankdata(np.concatenate([members, nonmembers]))[: len(members)]
    k = len(members)
    return float((ranks.sum() - k * (k + 1) / 2) / (k * len(nonmembers)))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The largest TPR over thresholds whose FPR is at most `fpr` (resolution 1/K)."""
    _, tp, fp = roc_counts(members, nonmembers)
    ok = fp / len(nonmembers) <= fpr
    return float(tp[ok].max() / len(members)) if ok.any() else 0.0


def dp_epsilon(tpr_lo: np.ndarray, fpr_hi: np.ndarray, delta: float) -> tuple[np.ndarray, ...]:
    """The epsilon that each (TPR_lo, FPR_hi) pair forces on an (epsilon, delta)-DP mechanism,
    from either inequality (at least 0), and which one gave it (0: TPR/FPR, 1: TNR/FNR)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        forms = np.stack(
            [
                np.log((tpr_lo - delta) / fpr_hi),
                np.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo)),
            ]
        )
    forms = np.nan_to_num(forms, nan=0.0, neginf=0.0, posinf=np.inf).clip(min=0.0)
    return forms.max(axis=0), forms.argmax(axis=0)


def epsilon_lower_bound(
    members: np.ndarray, nonmembers: np.ndarray, delta: float, confidence: float
) -> dict:
    """The empirical epsilon lower bound (see the module docstring) and the (TPR, FPR) pair that
    gives it, with its Clopper-Pearson bounds; `ceiling`: what TPR 1, FPR 0 would give."""
    thresholds, tp, fp = roc_counts(members, nonmembers)
    k_in, k_out = len(members), len(nonmembers)
    alpha = (1.0 - confidence) / (2 * len(thresholds))
    tpr_lo, _ = clopper_pearson(tp, k_in, alpha)
    _, fpr_hi = clopper_pearson(fp, k_out, alpha)
    eps, form = dp_epsilon(tpr_lo, fpr_hi, delta)
    ceiling, _ = dp_epsilon(
        clopper_pearson(k_in, k_in, alpha)[0], clopper_pearson(0, k_out, alpha)[1], delta
    )
    i = int(np.argmax(eps))
    best = {
        "eps_lb": float(eps[i]),
        "form": ("tpr/fpr", "tnr/fnr")[int(form[i])] if eps[i] > 0 else "none",
        "threshold": float(thresholds[i]),
        "tpr": int(tp[i]) / k_in,
        "fpr": int(fp[i]) / k_out,
        "tpr_lo": float(tpr_lo[i]),
        "fpr_hi": float(fpr_hi[i]),
    }
    return {**best, "ceiling": float(ceiling), "n_thresholds": len(thresholds)}


def attack_summary(
    members: np.ndarray, nonmembers: np.ndarray, delta: float, confidence: float
) -> dict:
    """AUC, TPR at low FPR and the epsilon lower bound of one attack's scores."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    bound = epsilon_lower_bound(members, nonmembers, delta, confidence)
    return {
        "auc": auc(members, nonmembers),
        **{f"tpr_at_fpr_{f:g}": tpr_at_fpr(members, nonmembers, f) for f in LOW_FPRS},
        "eps_lb": bound.pop("eps_lb"),
        "eps_lb_ceiling": bound.pop("ceiling"),
        "best": bound,
    }


# ---------------------------------------------------------------------------------------------
# Canaries and attacks


def make_canaries(
    n: int, dim: int, seed: int, avoid: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """`n` out-of-distribution records, standardized per record as every real embedding is,
    and the name of their design.

    `hadamard` (when n < H, the largest power of two <= dim): n non-constant rows of the H x H
    Hadamard matrix on H random coordinates (0 elsewhere). Their entries are +-a or 0, so the
    fixed squash keeps them exactly orthogonal and of equal norm in the space the models see:
    a member moves the decoder's output for its label along its own direction and along no other
    canary's. The rows are random, or, given `avoid` (a direction of the models' space: the
    centred mean of the real records of the canaries' label), the n rows most orthogonal to it,
    so that what the decoder learned from real data hardly projects onto any canary.
    `gaussian` otherwise: standard Gaussian vectors (nearly orthogonal in high dimension)."""
    rng = np.random.default_rng(seed)
    h = 1 << (dim.bit_length() - 1)
    if n >= h:
        return standardize_records(rng.normal(size=(n, dim))), "gaussian"
    cols = rng.choice(dim, size=h, replace=False)
    rows = hadamard(h)[1:][rng.permutation(h - 1)]
    if avoid is not None:
        rows = rows[np.argsort(np.abs(rows @ avoid[cols]), kind="stable")]
    x = np.zeros((n, dim))
    x[:, cols] = rows[:n]
    return standardize_records(x), "hadamard"


def with_canaries(data: ClientData, x: np.ndarray, label: int) -> ClientData:
    """The client with canary records `x` (all of class `label`) added to its training data."""
    y = np.full(len(x), label, dtype=data.y_train.dtype)
    return replace(
        data,
        x_train=np.concatenate([data.x_train, x.astype(data.x_train.dtype)]),
        y_train=np.concatenate([data.y_train, y]),
    )


def shared_model(
    method: str, weights: StateDict, dim: int, n_classes: int, cfg: GenerativeConfig
) -> torch.nn.Module:
    """A decoder (DP-CVAE) or generator (DP-CGAN) holding released weights; called (z, onehot)."""
    if method == "dpcvae":
        model = seeded(0, lambda: CVAE(dim, n_classes, cfg.hidden_dim, cfg.latent_dim))
        load_decoder(model, weights)
        return _Decode(model)
    gen = seeded(0, lambda: Generator(dim, n_classes, cfg.latent_dim))
    gen.load_state_dict(weights)
    return gen.eval()


class _Decode(torch.nn.Module):
    """A CVAE's decode(z, onehot) as a module call."""

    def __init__(self, model: CVAE):
        super().__init__()
        self.model = model.eval()

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z, onehot)


@torch.no_grad()
def reconstruction_scores(
    decode: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    latent_dim: int,
    n_latent: int,
    seed: int,
) -> np.ndarray:
    """Minus each candidate's best reconstruction by the released model: min over `n_latent`
    prior draws z of mean_d (x - decode(z, y))^2. The same draws serve every candidate."""
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


# ---------------------------------------------------------------------------------------------
# The audit


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
    if method not in GENERATIVE_METHODS:
        raise AuditError(f"{run_dir}: method {method!r} has nothing to audit (dpcvae, dpcgan)")
    try:
        gen_cfg = GenerativeConfig(**config["generative"])
        dp_cfg = DPConfig(**config["dp"])
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


def canary_label(clients: list[ClientData], index: int, n_classes: int) -> int:
    """The target client's rarest class, ties going to the class rarest in the whole federation
    (whose global decoder then mixes the fewest real records into the canaries' label)."""
    own = np.bincount(clients[index].y_train, minlength=n_classes)
    total = sum(np.bincount(c.y_train, minlength=n_classes) for c in clients)
    return int(np.lexsort((np.arange(n_classes), total, own))[0])


def _reported_epsilon(metrics: dict, client_id: int) -> float | None:
    privacy = metrics.get("privacy") or {}
    for c in privacy.get("clients", []):
        if c.get("id") == client_id:
            return c.get("epsilon")
    return None


def _released_weights(client) -> StateDict:
    """The shared tensors the client sent in its last round (its model is left as trained)."""
    if isinstance(client, CVAEClient):
        return decoder_state(client.model)
    return {k: v.detach().clone() for k, v in client.generator.state_dict().items()}


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
    audited[index] = with_canaries(target, canaries[is_member], label)

    gen_clients, weights, _ = train_generative(
        setup.method, audited, setup.n_classes, gen_cfg, setup.dp, setup.seed
    )
    client = gen_clients[index]
    dim = target.x_train.shape[1]
    x = squash(canaries, temp)  # the space the models see
    y = np.full(2 * k, label)

    scores = {}
    for name, released in (
        ("decoder_client", _released_weights(client)),
        ("decoder_global", weights),
    ):
        model = shared_model(setup.method, released, dim, setup.n_classes, gen_cfg)
        scores[name] = reconstruction_scores(
            model,
            x,
            y,
            setup.n_classes,
            gen_cfg.latent_dim,
            cfg.n_latent,
            derive_seed(seed, LATENT),
        )
    # the client's synthetic data, drawn as finish_client draws it
    data = audited[index]
    rng = np.random.default_rng(derive_seed(setup.seed, LABELS, data.id))
    labels = np.repeat(
        np.arange(setup.n_classes),
        synthetic_label_counts(data.y_train, setup.n_classes, gen_cfg, rng),
    )
    synthetic = client.sample(weights, labels, generator(derive_seed(setup.seed, SAMPLE, data.id)))
    scores["synthetic_dcr"] = dcr_scores(x, y, synthetic, labels)

    privacy = client.privacy()
    delta = setup.dp.delta
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
        "canary": {"label": label, "design": design},
        "config": asdict(cfg),
        "dp_enabled": setup.dp.enabled,
        "delta": delta,
        "confidence": cfg.confidence,
        "confidence_per_attack": each,
        "epsilon_spent": privacy["epsilon"],
        "epsilon_reported": _reported_epsilon(setup.metrics, target_id),
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
    lines = [
        f"{audit['method']}: client {audit['target_client']} ({audit['n_train']} records + "
        f"{audit['n_canaries']} canaries of class {audit['canary']['label']}; "
        f"{audit['n_nonmembers']} held out), DP {'on' if audit['dp_enabled'] else 'OFF'}",
        f"{'attack':<16} {'AUC':>6} {'TPR@1%':>7} {'TPR@10%':>8} {'eps_lb':>7} {'ceiling':>8}",
    ]
    for name, a in audit["attacks"].items():
        lines.append(
            f"{name:<16} {a['auc']:6.3f} {a['tpr_at_fpr_0.01']:7.3f} {a['tpr_at_fpr_0.1']:8.3f} "
            f"{a['eps_lb']:7.3f} {a['eps_lb_ceiling']:8.3f}"
        )
    conf = f"{100 * audit['confidence']:g}%"
    if audit["dp_enabled"]:
        reported = audit["epsilon_reported"]
        reported = "n/a" if reported is None else f"{reported:.4f}"
        lines.append(
            f"spent epsilon (delta {audit['delta']:g}): {audit['epsilon_spent']:.4f} in the "
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m algorithms.audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = AuditConfig()
    parser.add_argument("run_dir", help="a finished dpcvae / dpcgan run directory (main.py)")
    parser.add_argument(
        "--target_client",
        type=int,
        default=None,
        help="id of the client whose training gets the canaries. Default: the smallest client",
    )
    parser.add_argument(
        "--n_canaries",
        type=int,
        default=d.n_canaries,
        help=f"canaries inserted (members); as many are held out. Default: {d.n_canaries}",
    )
    parser.add_argument(
        "--canary_label",
        type=int,
        default=None,
        help="class index of the canaries. Default: the target client's rarest class (ties: "
        "the federation's rarest)",
    )
    parser.add_argument(
        "--n_latent",
        type=int,
        default=d.n_latent,
        help=f"latent draws of the reconstruction attack. Default: {d.n_latent}",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=d.confidence,
        help=f"confidence of the epsilon lower bounds. Default: {d.confidence}",
    )
    parser.add_argument("--database_root", default=None, help="Default: the run's config.json")
    parser.add_argument("--split_file", default=None, help="Default: the run's config.json")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an audit already in metrics.json"
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads, as main.py's: that many clients train at once; 0 keeps torch's "
        "default. Default: 1",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        if args.num_threads < 0:
            raise AuditError(f"--num_threads must be >= 0, got {args.num_threads}")
        try:
            cfg = AuditConfig(
                target_client=args.target_client,
                n_canaries=args.n_canaries,
                canary_label=args.canary_label,
                n_latent=args.n_latent,
                confidence=args.confidence,
            )
        except ValueError as err:
            raise AuditError(str(err)) from None
        setup = load_run(args.run_dir, args.database_root, args.split_file)
        if "audit" in setup.metrics and not args.overwrite:
            raise AuditError(
                f"{setup.run_dir}: metrics.json already holds an audit; pass --overwrite"
            )
        if args.num_threads > 0:
            torch.set_num_threads(args.num_threads)
        audit = run_audit(setup, cfg)
    except AuditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_bounds(audit)
    except PrivacyViolation as err:
        print(format_report(audit, checked=False), file=sys.stderr)
        print(f"BUG: {err}", file=sys.stderr)
        return 1
    write_metrics(setup.run_dir, {**setup.metrics, "audit": audit})
    print(format_report(audit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
