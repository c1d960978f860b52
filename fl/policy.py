"""A site's own privacy policy, read from its SuperNode's node config, and the checks it makes.

Every node-config key is one of NODE_KEYS (an unknown or misspelled key is refused, naming it).
The defaults are a hospital's: a site that sets nothing serves only private runs within a finite
epsilon, and releases no metric or statistic computed on its data. `docs/flower.md`'s node-config
table is `node_keys_table()` (a test keeps them equal).

What a run costs is computed by the site, from the values it will use (`fl.charge.run_charge`;
under secure aggregation both epsilons, of which the ledger charges `charged_epsilon`), and a
run's identity in the site's ledger is a hash of everything that determines its cost
(`fl.charge.run_binding`). No rule reads the site's data: a query is answered from the policy
and the ledger alone, so it reveals nothing about the records.
A run whose settings exceed the policy is refused at its first message (the coordinator gets
one refusal naming the site and the rule) and at every later one. `PERMISSIVE` is the policy of
`fl/run_local.py` and of Flower's simulation engine (one researcher holds every simulated
node), under which results equal main.py's.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass

from algorithms.flags import spelling
from algorithms.methods import registry
from algorithms.options import Settings
from algorithms.privacy.config import COUNT_NOISE, NOISE_SOURCES, DPConfig
from algorithms.run_files import shares_dp
from fl.charge import RunCharge, is_secure, run_charge
from fl.charge import run_binding as run_binding  # re-exported: the site's binding
from utils.cli import flag_name


class PolicyError(ValueError):
    """A site's node config that cannot be read as a policy (the message names the key)."""


class Refusal(RuntimeError):
    """A site refuses a run or a message; the message names the site and the rule."""


# The largest target epsilon of one run that a site accepts by default (a hospital's choice:
# set max-epsilon in the node config; "inf" only together with allow-no-dp for public data).
DEFAULT_MAX_EPSILON = 10.0
# The largest delta of one run by default: the paper's delta, and `--preset dp`'s.
DEFAULT_MAX_DELTA = 1e-4


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts. The defaults are a hospital's (NODE_KEYS)."""

    max_epsilon: float = DEFAULT_MAX_EPSILON
    max_delta: float = DEFAULT_MAX_DELTA
    allow_no_dp: bool = False
    min_count_noise: float = COUNT_NOISE
    methods: tuple[str, ...] = registry.flower_methods()
    release_metrics: bool = False
    release_fidelity: bool = False
    noise_source: str = "secure"
    min_honest_sites: int = 1
    charge_honest: bool = False
    max_patient_records: int = 0


@dataclass(frozen=True)
class NodeKey:
    """One node-config key: its name, its default in words and what it sets."""

    name: str
    default: str
    meaning: str


# Every key a node config may hold (`flower-supernode --node-config "key=value ..."`).
NODE_KEYS = (
    NodeKey("client-id", "required", "which client of the split this site is"),
    NodeKey(
        "database-root",
        "required",
        "the site's own embedding database (a deployment never opens the coordinator's path)",
    ),
    NodeKey(
        "split-file",
        f"main-args' `{spelling('split_file')}`",
        "the site's split file (python -m data.site_split)",
    ),
    NodeKey(
        "ledger-dir",
        "required",
        "the folder of the site's privacy ledger (initialise it: python -m fl.ledger init)",
    ),
    NodeKey(
        "dataset-id",
        "required",
        "what the site calls its dataset: one budget per dataset-id, whatever its encoding "
        "(letters, digits, '.', '_', '-')",
    ),
    NodeKey(
        "site-secret",
        "a `.site_key` file next to the database",
        "the key of the hashes the site reports and of its noise",
    ),
    NodeKey(
        "max-epsilon",
        f"{DEFAULT_MAX_EPSILON:g}",
        "the largest epsilon one run may spend; a finite one refuses every run that shares "
        "without DP",
    ),
    NodeKey(
        "max-delta",
        f"{DEFAULT_MAX_DELTA:g}",
        "the largest delta one run may spend (a fixed value: no rule reads the data)",
    ),
    NodeKey(
        "allow-no-dp",
        "false",
        "serve runs that share without DP (needs max-epsilon = inf; the FedAvg weight is the "
        "exact record count)",
    ),
    NodeKey(
        "min-count-noise",
        f"{COUNT_NOISE:g}",
        f"the smallest noise on the released record count (`{flag_name(DPConfig, 'count_noise')}`)",
    ),
    NodeKey("methods", "every Flower method", "the methods it serves, comma-separated"),
    NodeKey(
        "release-metrics",
        "false",
        "release metrics computed on its data: validation grids, test rows, the synthetic "
        "heads' accuracies (not DP: a crafted model turns them into class counts)",
    ),
    NodeKey(
        "release-fidelity",
        "false",
        "release fidelity statistics on its training embeddings (W-distance, PRDC: a "
        "membership oracle)",
    ),
    NodeKey(
        "noise-source",
        "secure",
        "`seeded` draws the noise from the run seed, which the coordinator knows (testing only)",
    ),
    NodeKey(
        "min-honest-sites",
        "1",
        f"the least `{flag_name(DPConfig, 'min_honest_sites')}` it serves; above 1 it serves only "
        f"runs with `{flag_name(DPConfig, 'secure_aggregation')}` (noise shares)",
    ),
    NodeKey(
        "charge-honest",
        "false",
        "charge a secure run's epsilon with m honest sites to the ledger and max-epsilon; "
        "false: its epsilon_collusion, the guarantee the site holds alone",
    ),
    NodeKey(
        "max-patient-records",
        "0",
        "on a ledger counted per patient: 0 refuses record-level runs; N >= 1 (public: no "
        "patient has more than N training records here, checked) serves them, charged the group "
        "bound for N records, (N eps, N e^((N-1) eps) delta)",
    ),
)
# Keys Flower itself sets in simulation (the simulated node's partition).
SIMULATION_KEYS = ("partition-id", "num-partitions")
# Keys a deployment (a SuperNode with `client-id`) must set: the coordinator chooses none of
# the site's paths, and the budget belongs to the dataset, whatever its encoding.
REQUIRED_KEYS = ("database-root", "ledger-dir", "dataset-id")
# Keys of earlier versions, refused with what replaced them.
REPLACED_KEYS = {
    "budget-epsilon": "the budget lives in the ledger: python -m fl.ledger budget",
    "budget-delta": "the budget lives in the ledger: python -m fl.ledger budget",
}


# The node config under which a site serves every run the Flower app can run and releases what
# main.py reports (fl/run_local.py, tests, Flower's simulation engine): not a hospital's.
PERMISSIVE = {
    "max-epsilon": "inf",
    "max-delta": 1.0,
    "allow-no-dp": "true",
    "min-count-noise": 0.0,
    "release-metrics": "true",
    "release-fidelity": "true",
}


def node_keys_table() -> str:
    """NODE_KEYS as the Markdown table of docs/flower.md."""
    rows = ["| key | default | what it sets |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.default} | {k.meaning} |" for k in NODE_KEYS]
    return "\n".join(rows)


def check_node_keys(node_config: dict) -> None:
    """Refuse (PolicyError, one line naming it) a key that is not a node-config key, and a
    deployment's node config without a required key."""
    known = [k.name for k in NODE_KEYS] + list(SIMULATION_KEYS)
    for key in node_config:
        if key in REPLACED_KEYS:
            raise PolicyError(f"node config: {key} is no longer read ({REPLACED_KEYS[key]})")
        if key not in known:
            close = difflib.get_close_matches(str(key).replace("_", "-"), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PolicyError(f"node config: unknown key {key!r}{hint}")
    if "client-id" in node_config:
        missing = [k for k in REQUIRED_KEYS if not str(node_config.get(k, "")).strip()]
        if missing:
            raise PolicyError(
                f"node config: a deployed site must set {', '.join(missing)} "
                "(flower-supernode --node-config)"
            )


def _flag(node_config: dict, key: str, default: bool) -> bool:
    value = node_config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise PolicyError(f"node config: {key} must be true or false, got {value!r}")


def _positive(node_config: dict, key: str, default: float, zero: bool = False) -> float:
    try:
        value = float(node_config.get(key, default))
    except (TypeError, ValueError):
        value = math.nan
    if not (value >= 0 if zero else value > 0):
        what = "a non-negative" if zero else "a positive"
        raise PolicyError(f"node config: {key} must be {what} number, got {node_config[key]!r}")
    return value


def _count(node_config: dict, key: str, default: int, least: int = 1) -> int:
    text = str(node_config.get(key, default)).strip()
    if not (text.isdigit() and int(text) >= least):
        raise PolicyError(f"node config: {key} must be a whole number >= {least}, got {text!r}")
    return int(text)


def site_policy(node_config: dict) -> SitePolicy:
    """The policy in a node config (absent keys take the hospital's defaults); PolicyError
    naming the key for an unknown key, a missing required one or a bad value."""
    check_node_keys(node_config)
    d = SitePolicy()
    methods = d.methods
    if "methods" in node_config:
        methods = tuple(m.strip() for m in str(node_config["methods"]).split(",") if m.strip())
        unknown = [m for m in methods if m not in registry.flower_methods()]
        if unknown or not methods:
            raise PolicyError(
                f"node config: methods must name Flower methods "
                f"({', '.join(registry.flower_methods())}), got {node_config['methods']!r}"
            )
    source = str(node_config.get("noise-source", d.noise_source))
    if source not in NOISE_SOURCES:
        raise PolicyError(
            f"node config: noise-source must be one of {NOISE_SOURCES}, got {source!r}"
        )
    max_delta = _positive(node_config, "max-delta", d.max_delta)
    if max_delta > 1:
        raise PolicyError(f"node config: max-delta must be at most 1, got {max_delta:g}")
    return SitePolicy(
        max_epsilon=_positive(node_config, "max-epsilon", d.max_epsilon),
        max_delta=max_delta,
        allow_no_dp=_flag(node_config, "allow-no-dp", d.allow_no_dp),
        min_count_noise=_positive(node_config, "min-count-noise", d.min_count_noise, zero=True),
        methods=methods,
        release_metrics=_flag(node_config, "release-metrics", d.release_metrics),
        release_fidelity=_flag(node_config, "release-fidelity", d.release_fidelity),
        noise_source=source,
        min_honest_sites=_count(node_config, "min-honest-sites", d.min_honest_sites),
        charge_honest=_flag(node_config, "charge-honest", d.charge_honest),
        max_patient_records=_count(
            node_config, "max-patient-records", d.max_patient_records, least=0
        ),
    )


def policy_violation(
    policy: SitePolicy, settings: Settings, charge: RunCharge | None = None
) -> str | None:
    """The rule of `policy` that the run's settings break, in words; None if they keep it.
    Data-independent: it reads the run's settings, its `charge` (`fl.charge.run_charge`; None:
    the run's target, for a run without secure aggregation) and the policy, never the records."""
    method, dp_flag = settings.method, functools.partial(flag_name, DPConfig)
    named = f"{spelling('method')} {method.name}"
    if method.name not in policy.methods:
        return f"{named} is not served (methods={','.join(policy.methods)})"
    if method.make_clients is None:
        return f"{named} has no client a site can build"
    dp = settings.configs.dp
    if shares_dp(settings) and not issubclass(method.client or object, registry.Accounted):
        return (
            f"{named} says it is private, but its client keeps no privacy accounting "
            "(no privacy() report): it would share without DP"
        )
    if not shares_dp(settings):
        what = f"{dp_flag('enabled')} off" if dp is not None else f"{named} (not private)"
        if math.isfinite(policy.max_epsilon):
            return (
                f"{what}: sharing without DP is forbidden by a finite max-epsilon "
                f"({policy.max_epsilon:g})"
            )
        if not policy.allow_no_dp:
            return f"{what}: sharing without DP is forbidden (allow-no-dp=false)"
    secure = is_secure(settings)
    if not secure and policy.min_honest_sites > 1:
        return (
            f"a run without {dp_flag('secure_aggregation')} is refused: min-honest-sites "
            f"{policy.min_honest_sites} demands noise shares summed over that many honest sites"
        )
    if not policy.release_metrics and "synthesis" not in method.sections:
        return (
            f"{named} is evaluated with heads the coordinator sends, whose "
            "metrics the site does not release (release-metrics=false)"
        )
    if not shares_dp(settings):
        return None
    dp = registry.required(dp, "dp")  # shares_dp: the method reads the dp section
    if secure and dp.min_honest_sites < policy.min_honest_sites:
        return (
            f"{dp_flag('min_honest_sites')} {dp.min_honest_sites} is below min-honest-sites "
            f"{policy.min_honest_sites}"
        )
    if dp.calibration not in (None, "total"):  # e.g. the paper's: spends more than its target
        return (
            f"{dp_flag('calibration')} {dp.calibration} spends more than "
            f"{dp_flag('epsilon')}: a site serves only runs calibrated for their whole training"
        )
    if dp.epsilon > policy.max_epsilon:
        return f"{dp_flag('epsilon')} {dp.epsilon:g} exceeds max-epsilon {policy.max_epsilon:g}"
    if dp.delta > policy.max_delta:
        return f"{dp_flag('delta')} {dp.delta:g} exceeds max-delta {policy.max_delta:g}"
    if dp.calibration is not None and dp.count_noise < policy.min_count_noise:
        return (
            f"{dp_flag('count_noise')} {dp.count_noise:g} is below min-count-noise "
            f"{policy.min_count_noise:g}"
        )
    if charge is None:
        if secure:
            raise ValueError("a secure run's policy check needs its charge (fl.charge.run_charge)")
        return None  # its charge is its target, checked above
    charged = charged_epsilon(policy, charge)
    if charge.secure and charged is not None and charged > policy.max_epsilon:
        which = "epsilon" if policy.charge_honest else "epsilon_collusion (charge-honest=false)"
        return (
            f"{which} {charged:.4g} of {dp_flag('epsilon')} {dp.epsilon:g} with "
            f"{dp_flag('min_honest_sites')} {dp.min_honest_sites} exceeds max-epsilon "
            f"{policy.max_epsilon:g}"
        )
    return None


def charged_epsilon(policy: SitePolicy, charge: RunCharge) -> float | None:
    """The epsilon the site's ledger charges for a run (and max-epsilon caps): a secure run's
    epsilon_collusion, the guarantee the site holds alone, unless the policy's charge-honest
    books its epsilon with m honest sites; any other run's epsilon (None: unbounded)."""
    if charge.secure and not policy.charge_honest:
        return charge.epsilon_collusion
    return charge.epsilon


def assess(
    policy: SitePolicy, settings: Settings, *, n_sites: int, shape: tuple[int, int]
) -> tuple[RunCharge, str | None]:
    """The run's charge on this site and the rule of `policy` it breaks (None: none). A secure
    run without a plan (its one line names the flag) is refused and charged as unbounded.
    `n_sites`: the sites in a sum; `shape`: (embedding size, classes), public facts."""
    try:
        charge = run_charge(settings, n_sites=n_sites, shape=shape)
    except ValueError as err:
        return RunCharge(None, 0.0), str(err)
    return charge, policy_violation(policy, settings, charge)
