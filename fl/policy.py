"""A site's own privacy policy, read from its SuperNode's node config, and the checks it makes.

Node config keys (`flower-supernode --node-config "max-epsilon=1.0 allow-no-dp=false ..."`).
The defaults are a hospital's: a site that sets nothing serves only runs whose settings keep
them, and releases no metric or statistic that a coordinator could turn into an oracle.
- `max-epsilon` (default: no limit): the largest target epsilon the site accepts; a finite one
  also refuses every run that shares without DP (`--disable_dp`, fedavg, fedprox), whatever
  `allow-no-dp` says;
- `max-delta` (default 1e-5): the largest delta it accepts; the site also refuses a delta of
  1/n or more, n its training record count (the refusal states the rule, not n);
- `allow-no-dp` (default false): whether it serves a run that shares without DP
  (`--disable_dp`, or a method that is not private: fedavg, fedprox, fedpft) when it sets no
  finite max-epsilon; such a run sends the exact record count as its FedAvg weight;
- `min-count-noise` (default the project's --count_noise, 20): the smallest noise on the
  released record count it accepts (a DP-SGD run's `--count_noise`);
- `methods` (default: every Flower method): the methods it serves, comma-separated;
- `release-metrics` (default false): whether it answers `evaluate.validate` and the test
  metrics of `evaluate` computed with a head the coordinator sends (fedavg, fedprox): a
  coordinator can craft heads whose accuracies reveal the site's class counts. When false
  such a run is refused at its start, and such a message at any time (a `Refusal` naming the
  rule). A generative run's test rows use
  only heads trained on the site, and its global synthetic-only head is trained on the site
  from the released global model, so they do not depend on this key;
- `release-fidelity` (default false): whether it reports fidelity statistics computed on its
  training embeddings (W-distance, PRDC: a membership oracle) at the end of a run;
- `noise-source` (default "secure"): where its private randomness comes from; "seeded" (from
  the run seed, which the coordinator knows) is a testing switch, recorded as such in the
  results.

A run whose settings exceed the policy is refused at its first message (the coordinator gets
one refusal naming the site and the rule) and at every later one. Whatever the policy, a site
trains at most the rounds its noise was calibrated for, answers the end-of-run steps once, and
sends no record count in the clear (only the noisy count of DP-SGD's FedAvg weight).
`PERMISSIVE` is the policy of `fl/run_local.py` and of Flower's simulation engine (one
researcher holds every simulated node), under which results equal main.py's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from algorithms.flags import spelling
from algorithms.methods import registry
from algorithms.options import Settings
from algorithms.privacy.config import COUNT_NOISE, NOISE_SOURCES, DPConfig
from utils.cli import flag_name

POLICY_KEYS = (
    "max-epsilon",
    "max-delta",
    "allow-no-dp",
    "min-count-noise",
    "methods",
    "release-metrics",
    "release-fidelity",
    "noise-source",
)


class PolicyError(ValueError):
    """A site's node config that cannot be read as a policy (the message names the key)."""


class Refusal(RuntimeError):
    """A site refuses a run or a message; the message names the site and the rule."""


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts. The defaults are a hospital's (see the module docstring)."""

    max_epsilon: float = math.inf
    max_delta: float = 1e-5
    allow_no_dp: bool = False
    min_count_noise: float = COUNT_NOISE
    methods: tuple[str, ...] = registry.flower_methods()
    release_metrics: bool = False
    release_fidelity: bool = False
    noise_source: str = "secure"


# The node config under which a site serves every run the Flower app can run and releases what
# main.py reports (fl/run_local.py, tests, Flower's simulation engine): not a hospital's.
PERMISSIVE = {
    "max-delta": 1.0,
    "allow-no-dp": "true",
    "min-count-noise": 0.0,
    "release-metrics": "true",
    "release-fidelity": "true",
}


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


def site_policy(node_config: dict) -> SitePolicy:
    """The policy in a node config (absent keys take the hospital's defaults)."""
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
    return SitePolicy(
        max_epsilon=_positive(node_config, "max-epsilon", d.max_epsilon),
        max_delta=_positive(node_config, "max-delta", d.max_delta),
        allow_no_dp=_flag(node_config, "allow-no-dp", d.allow_no_dp),
        min_count_noise=_positive(node_config, "min-count-noise", d.min_count_noise, zero=True),
        methods=methods,
        release_metrics=_flag(node_config, "release-metrics", d.release_metrics),
        release_fidelity=_flag(node_config, "release-fidelity", d.release_fidelity),
        noise_source=source,
    )


def policy_violation(
    policy: SitePolicy, settings: Settings, n_train: int | None = None
) -> str | None:
    """The rule of `policy` that the run's settings break, in words; None if they keep it.
    `n_train`: the site's training record count, for the rule delta < 1/n (the words name the
    rule, never n)."""
    method, dp_flag = settings.method, functools.partial(flag_name, DPConfig)
    named = f"{spelling('method')} {method.name}"
    if method.name not in policy.methods:
        return f"{named} is not served (methods={','.join(policy.methods)})"
    dp = settings.configs.dp
    shares_without_dp = not method.private or dp is None or not dp.enabled
    if shares_without_dp:
        what = f"{dp_flag('enabled')} off" if dp is not None else f"{named} (not private)"
        if math.isfinite(policy.max_epsilon):
            return (
                f"{what}: sharing without DP is forbidden by a finite max-epsilon "
                f"({policy.max_epsilon:g})"
            )
        if not policy.allow_no_dp:
            return f"{what}: sharing without DP is forbidden (allow-no-dp=false)"
    if not policy.release_metrics and "synthesis" not in method.sections:
        return (
            f"{named} is evaluated with heads the coordinator sends, whose "
            "metrics the site does not release (release-metrics=false)"
        )
    if shares_without_dp:
        return None
    if dp.epsilon > policy.max_epsilon:
        return f"{dp_flag('epsilon')} {dp.epsilon:g} exceeds max-epsilon {policy.max_epsilon:g}"
    if dp.delta > policy.max_delta:
        return f"{dp_flag('delta')} {dp.delta:g} exceeds max-delta {policy.max_delta:g}"
    if n_train is not None and dp.delta * n_train >= 1:
        return (
            f"{dp_flag('delta')} {dp.delta:g} is not below 1/n, n the site's training record count "
            "(delta must be much smaller than one record's share)"
        )
    # a one-shot release (DP-FedPFT, calibration None) spends exactly its --epsilon
    if dp.calibration not in (None, "total") and math.isfinite(policy.max_epsilon):
        return (
            f"{dp_flag('calibration')} {dp.calibration} spends more than "
            f"{dp_flag('epsilon')}, and the site has a max-epsilon ({policy.max_epsilon:g})"
        )
    if dp.calibration is not None and dp.count_noise < policy.min_count_noise:
        return (
            f"{dp_flag('count_noise')} {dp.count_noise:g} is below min-count-noise "
            f"{policy.min_count_noise:g}"
        )
    return None
