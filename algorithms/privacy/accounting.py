"""Privacy accounting: the noise calibration for the whole training and for a one-shot
Gaussian release, the epsilon actually spent, and the `privacy` block of metrics.json with what
DP does not cover (the DP settings are in config.py).

Guarantee: record-level (epsilon, delta)-DP for each client (on data with patient ids the report
adds the patients and the group-privacy bound that implies for the largest one), over everything
the client's DP-trained model releases during the run (every round's shared weights), under
add/remove-one adjacency, with Poisson sampling on every step. The noise multiplier is calibrated
for the total number of steps the client takes (rounds x local epochs x steps per epoch), so the
spent epsilon, read back from the accountant after training, never exceeds the target. A one-shot
release (algorithms/methods/fedpft.py) is one Gaussian mechanism: its epsilon is exact (Balle &
Wang). The DP-SGD step is in dp_sgd.py, the noise draws in noise.py, and the code that depends on
Opacus internals in opacus_compat.py.
"""

from __future__ import annotations

import functools
import json
import math
import textwrap
import threading
import warnings

from algorithms.privacy.config import DPConfig
from algorithms.privacy.opacus_compat import load_opacus
from algorithms.privacy.secure_aggregation import SECURE_TRUST, SKELLAM_RDP, secure_block
from utils.cli import flag_name

# What the report says of a run whose noise is seeded (also in the README).
SEEDED_CAVEAT = (
    "seeded noise: anyone who knows the run seed can regenerate every noise draw, so the "
    "guarantee holds only against an adversary who does not know the seed (simulation only; "
    f"{flag_name(DPConfig, 'noise_source')} or Flower sites draw it from OS entropy)"
)
# The paper's code calibrates the noise for this many epochs, whatever the training length.
PAPER_CALIBRATION_EPOCHS = 20
# Accountant calls silence warnings (process-wide state) and share caches: clients trained in
# threads (run_federation's `workers`) take turns.
_ACCOUNTING = threading.Lock()
# What DP does not cover in this project's protocol (also written into metrics.json).
NOT_COVERED = (
    "the end-of-run evaluation each client reports: validation accuracy and balanced accuracy "
    "for the grid of every downstream mode (lambda for mix and prior, the synthetic weight for "
    "joint), test metrics at each mode's and lambda metric's choice (in a simulation also on "
    "the pooled test data of every client) (with the client's split "
    "sizes n_train, n_val, n_test in a simulation; no split size leaves a Flower site), the "
    "synthetic head's test accuracy with the share of its most frequent test class, and "
    "fidelity statistics computed on its training embeddings (under Flower each only if the "
    "site's policy, release-metrics and release-fidelity, allows it)",
    "the training loss (main.py's history.csv; under Flower it stays in the site's log)",
    "the spent epsilon each client reports, and its noise source",
    "under Flower: each site's database fingerprint and split file sha256 (hashes sent at "
    "the start, that name the data without revealing it), its embedding size and classes",
    "under Flower: the end-of-run weights are evaluated once, but a site cannot check that "
    "they are the average of the last round (that needs secure aggregation)",
    "simulation (main.py): the budget is per run; under Flower a site's ledger (fl/ledger.py) "
    "composes every run on its data with basic composition (epsilons and deltas summed), and "
    "a round or answer that fails after its claim still counts as spent",
    "the choice of hyper-parameters and of the backbone",
    "floating point: the Gaussian noise is drawn in float32 by Box-Muller, its radius refined in "
    "float64 beyond 4.08 sigma (draws stop at 10.33 sigma, a mass of 2^-77 per pair); that tail "
    "and floating-point attacks on the Gaussian mechanism (Mironov 2012-style) are not accounted",
    "under Flower: no split size leaves a site, but its reported accuracies are exact ratios "
    "of counts (their denominators can reveal n_val and n_test), and a site's reply time and "
    "cost.wall_seconds grow with its true n (not fixable cheaply)",
    "under Flower with release-metrics=true: the accuracies of heads the coordinator sends "
    "(fedavg, fedprox), which crafted heads turn into the site's exact class counts",
)
# Listed in docs/privacy.md only: facts about the code, not about a run's releases.
DOCS_NOT_COVERED = (
    "the baselines (fedavg, fedprox, fedlambda, centralized): not private (epsilon infinite)",
    "secure noise is a Mersenne Twister (MT19937) whose state is SHAKE-256 of the site's "
    "secret, not a CSPRNG: safe only because no raw output leaves the site",
    "the simulator's own files (synthetic.npz holds real embeddings of one client)",
    "group privacy (several records of one patient) at the record unit, beyond the group bound "
    "that a run on data with patient ids reports",
    "under Flower: a site's refusal of a run names the rule it breaks, a budget refusal with "
    "the epsilon the dataset has spent (a fact of earlier runs' settings, not of the records)",
)
# Added when the record count is released exactly (--count_noise 0).
EXACT_COUNT = (
    f"each client's number of training samples ({flag_name(DPConfig, 'count_noise')} 0: sent in "
    "the clear as its "
    "FedAvg weight, and implied by its sampling rate and DP-CGAN's fake batch size)"
)
# The accountant of a one-shot Gaussian release, as the privacy block names it.
ANALYTIC_GAUSSIAN = "analytic-gaussian"


def count_epsilon(cfg: DPConfig) -> float:
    """The epsilon that the noisy count alone spends at the config's delta (0 without one)."""
    history = list(cfg.count_history())
    if not history or cfg.accountant is None:  # no accountant: no count entry (count_history)
        return 0.0
    return epsilon_from_history(cfg.accountant, history, cfg.delta)


def check_count_noise(cfg: DPConfig | None) -> None:
    """Refuse a count noise that alone spends the whole target epsilon (runs the accountant:
    called when a run starts, and before every calibration, not while flags are parsed)."""
    if cfg is None or not cfg.enabled:
        return
    count = count_epsilon(cfg)
    if count >= cfg.epsilon:
        noise, target = flag_name(cfg, "count_noise"), flag_name(cfg, "epsilon")
        raise ValueError(
            f"{noise} {cfg.count_noise} alone spends epsilon {count:.3g} of the target "
            f"{target} {cfg.epsilon}: raise {noise}"
        )


def sample_rate_for(n: int, batch_size: int) -> float:
    """Opacus's Poisson rate for a dataset of n with nominal batch size B: 1 / ceil(n / B)."""
    return 1.0 / math.ceil(n / batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """DP steps in one epoch (Opacus: 1 / sample rate)."""
    return math.ceil(n / batch_size)


def calibration_key(cfg: DPConfig, sample_rate: float, total_steps: int, steps_epoch: int) -> str:
    """Everything `calibrate_noise` computes the noise multiplier from, as one JSON string:
    target epsilon and delta, sample rate, calibrated steps, accountant, the count's release."""
    steps = calibrated_steps(cfg, total_steps, steps_epoch)
    prefix = [list(h) for h in cfg.count_history()]
    return json.dumps([cfg.epsilon, cfg.delta, sample_rate, steps, cfg.accountant, prefix])


def calibrated_steps(cfg: DPConfig, total_steps: int, steps_epoch: int) -> int:
    """The steps the noise is calibrated for: every step the client takes (`total`), or the
    paper's 20 epochs whatever the training (`paper`)."""
    return total_steps if cfg.calibration == "total" else PAPER_CALIBRATION_EPOCHS * steps_epoch


# Noise multipliers calibrated by an earlier process, by calibration key. A Flower site runs
# each message in a new process: it keeps its client's multiplier in its Context.state and
# hands it back here (`remember_calibration`), so the PRV search runs once per run.
_REMEMBERED: dict[str, float] = {}


def remember_calibration(key: str, noise_multiplier: float) -> None:
    """Let `calibrate_noise` answer `key` (a `calibration_key`) with this earlier result."""
    _REMEMBERED[key] = float(noise_multiplier)


def calibrate_noise(cfg: DPConfig, sample_rate: float, total_steps: int, steps_epoch: int) -> float:
    """Noise multiplier for the target (epsilon, delta), composed with the count's release.
    `total` calibrates for every step the client will take; `paper` reproduces the paper's code
    (20 epochs, whatever the training)."""
    check_count_noise(cfg)
    key = calibration_key(cfg, sample_rate, total_steps, steps_epoch)
    if key in _REMEMBERED:
        return _REMEMBERED[key]
    steps = calibrated_steps(cfg, total_steps, steps_epoch)
    with _ACCOUNTING:
        return _noise_multiplier(
            epsilon=cfg.epsilon,
            delta=cfg.delta,
            rate=sample_rate,
            steps=steps,
            accountant=cfg.accountant,
            prefix=cfg.count_history(),
        )


@functools.lru_cache(maxsize=1024)
def _noise_multiplier(
    *, epsilon: float, delta: float, rate: float, steps: int, accountant: str, prefix: tuple
) -> float:
    """Opacus's binary search (`get_noise_multiplier`, same bounds and tolerance) over a history
    that starts with `prefix` (the count's release). Cached: clients of equal size share it.

    Args:
        epsilon: the target epsilon.
        delta: the target delta.
        rate: the Poisson sampling rate.
        steps: the DP-SGD steps the noise is calibrated for.
        accountant: prv or rdp.
        prefix: the accountant's history before the steps (the count's release).
    """
    if not prefix:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PRV's "optimal order" chatter
            return float(
                load_opacus().accountants.utils.get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                )
            )

    def spent(sigma: float) -> float:
        return _epsilon(accountant, (*prefix, (sigma, rate, steps)), delta)

    low, high, eps_high = 0.0, 10.0, math.inf
    while eps_high > epsilon:
        high *= 2
        eps_high = spent(high)
        if high > 2000:
            raise ValueError(
                f"{flag_name(DPConfig, 'epsilon')} {epsilon}: the privacy budget is too low"
            )
    while epsilon - eps_high > 0.01:
        mid = (low + high) / 2
        eps = spent(mid)
        if eps < epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high


def epsilon_from_history(
    accountant: str, history: list[tuple[float, float, int]], delta: float
) -> float:
    """Epsilon of a sequence of (noise multiplier, sample rate, steps), from a new accountant."""
    with _ACCOUNTING:
        return _epsilon(accountant, tuple(tuple(h) for h in history), delta)


@functools.lru_cache(maxsize=4096)
def _epsilon(accountant: str, history: tuple, delta: float) -> float:
    """Cached: the same history (e.g. clients of equal size, or a rerun) is computed once."""
    if not history:
        return 0.0
    acc = load_opacus().accountants.create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def calibrate_release(cfg: DPConfig) -> float:
    """Noise multiplier of a one-shot Gaussian release (DP-FedPFT): the smallest at which the
    release is (epsilon, delta)-DP, by the exact analytic Gaussian mechanism; 0 without DP."""
    from algorithms.privacy.analytic_gaussian import analytic_gaussian_noise  # SciPy, on first use

    return analytic_gaussian_noise(cfg.epsilon, cfg.delta) if cfg.enabled else 0.0


def release_epsilon(noise_multiplier: float, delta: float) -> float:
    """The epsilon that a one-shot Gaussian release with this noise multiplier spends."""
    from algorithms.privacy.analytic_gaussian import (
        analytic_gaussian_epsilon,  # SciPy, on first use
    )

    return analytic_gaussian_epsilon(noise_multiplier, delta)


def privacy_report(
    cfg: DPConfig,
    clients: list[dict],
    accountant: str | None = None,
    not_covered: tuple[str, ...] = NOT_COVERED,
) -> dict:
    """The `privacy` block of metrics.json. `clients`: id, noise_multiplier, epsilon (spent,
    from the accountant), and how it was accounted (DP-SGD: sample_rate, steps; a one-shot
    release: its mechanism and noise scale). `accountant`: when it is not `cfg.accountant`
    (a one-shot release: ANALYTIC_GAUSSIAN). The noise source is each client's (under Flower,
    its site's) and the block's is theirs when they agree ("mixed" otherwise)."""
    sources = {c.get("noise_source", cfg.noise_source) for c in clients}
    source = sources.pop() if len(sources) == 1 else "mixed"
    if not cfg.enabled:
        return {
            "enabled": False,
            "accountant": None,
            "target_epsilon": None,
            "delta": None,
            "max_grad_norm": None,
            "noise_multiplier": None,
            "calibration": None,
            "count_noise": None,
            "noise_source": source,
            "clients": [{"id": c["id"], "epsilon": None} for c in clients],
            "epsilon_max": None,
            "not_covered": ["DP is disabled: nothing is private"],
            "unit": None,
        }
    sigmas = {round(c["noise_multiplier"], 12) for c in clients}
    secure = [c for c in clients if "epsilon_collusion" in c]
    if secure:  # noise shares under secure aggregation: the Skellam RDP accountant
        accountant = SKELLAM_RDP
        not_covered = (*not_covered, SECURE_TRUST)
    sgd = accountant is None
    exact_count = [EXACT_COUNT] if sgd and cfg.count_noise == 0 else []
    return {
        "enabled": True,
        "accountant": accountant or cfg.accountant,
        "target_epsilon": cfg.epsilon,
        "delta": cfg.delta,
        "max_grad_norm": cfg.max_grad_norm,
        # one value when every client uses the same; per-client values are in "clients"
        "noise_multiplier": sigmas.pop() if len(sigmas) == 1 else None,
        "calibration": cfg.calibration,
        "count_noise": cfg.count_noise if sgd else None,
        "count_epsilon": count_epsilon(cfg) if sgd else None,
        "noise_source": source,
        "noise_caveat": None if source == "secure" else SEEDED_CAVEAT,
        "clients": clients,
        "epsilon_max": max(c["epsilon"] for c in clients),
        "not_covered": list(not_covered) + exact_count,
        # what DP protects: one record (one embedding), or one patient when every client ran
        # user-level DP-SGD (dp_client.py) or a patient-weighted DP-FedPFT release (fedpft.py);
        # see with_patients
        "unit": "patient" if all(c.get("unit") == "patient" for c in clients) else "record",
        **({"secure_aggregation": secure_block(secure)} if secure else {}),
    }


def group_bound(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """Group privacy: what a record-level (epsilon, delta) bound implies for a group of k
    records (one patient's): (k epsilon, k e^((k-1) epsilon) delta)."""
    return k * epsilon, k * math.exp((k - 1) * epsilon) * delta


def with_patients(report: dict, patients: dict | None) -> dict:
    """The privacy block with the patients of the clients' training data (data/patients.py
    facts; None: no patient ids, each record is its own patient) and, while the DP step is per
    record, the group-privacy bound for the largest patient."""
    if patients is None or not report.get("enabled"):
        return report
    if report.get("unit") == "patient":
        return {**report, "patients": patients}
    k = int(patients["records_per_patient_max"])
    eps, delta = group_bound(report["epsilon_max"], report["delta"], k)
    return {
        **report,
        "patients": patients,
        "group_privacy": {"k": k, "epsilon": eps, "delta": delta},
    }


def group_privacy_warning(report: dict) -> str | None:
    """A warning when a run on data with patient ids is private per record only and some
    patient has several records in a client's training data. None otherwise."""
    group = report.get("group_privacy") if report.get("enabled") else None
    if not group or report.get("unit") != "record" or group["k"] <= 1:
        return None
    hollow = "; that is no guarantee (delta >= 1)" if group["delta"] >= 1 else ""
    return (
        f"epsilon {report['epsilon_max']:.3g} is per record, not per patient: a patient has up "
        f"to {group['k']} records in a client's training data, and for that patient the bound "
        f"is only (k*eps, k*e^((k-1)*eps)*delta) = ({group['epsilon']:.3g}, "
        f"{group['delta']:.3g}){hollow}"
    )


def delta_warning(cfg: DPConfig | None, sizes: list[int], ids: list[int]) -> str | None:
    """A warning when delta is not below 1/n for some client (the usual requirement of DP):
    `sizes` and `ids` are the clients' training sizes and ids. None when all is well."""
    if cfg is None or not cfg.enabled:
        return None
    small = [i for i, n in zip(ids, sizes) if cfg.delta >= 1.0 / max(n, 1)]
    if not small:
        return None
    return (
        f"{flag_name(cfg, 'delta')} {cfg.delta} is not below 1/n for clients {small} "
        f"(n = their training size); the guarantee is weak for them"
    )


def over_budget_warning(report: dict) -> str | None:
    """A warning when a run's spent epsilon exceeds its target (only --dp_calibration paper),
    from its `privacy` block. None when all is well."""
    if not report.get("enabled"):
        return None
    spent, target = report["epsilon_max"], report["target_epsilon"]
    if spent <= target + 1e-9:
        return None
    return (
        f"the spent epsilon ({spent:.3f}, largest over clients, from the accountant) exceeds "
        f"the target {target} ({flag_name(DPConfig, 'calibration')} {report['calibration']}); "
        "this run is NOT "
        f"{target}-DP"
    )


def not_covered_markdown() -> str:
    """docs/privacy.md's list of what is not covered, from the tuples the runs write (a test
    keeps the page equal to it): NOT_COVERED, EXACT_COUNT, then DOCS_NOT_COVERED."""
    items = [*NOT_COVERED, EXACT_COUNT]
    items += [f"(docs only) {text}" for text in DOCS_NOT_COVERED]
    wrap = functools.partial(textwrap.fill, width=100, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(wrap(f"{text};") for text in items)
