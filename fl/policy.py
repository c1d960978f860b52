"""A site's own privacy policy, read from its SuperNode's node config, and the checks it makes.

Node config keys (`flower-supernode --node-config "max-epsilon=1.0 allow-no-dp=false ..."`):
- `max-epsilon` (default: no limit): the largest target epsilon the site accepts;
- `max-delta` (default: no limit): the largest delta it accepts;
- `allow-no-dp` (default true): whether it serves a run that shares without DP (`--disable_dp`,
  or a method that is not private: fedavg, fedprox);
- `methods` (default: every Flower method): the methods it serves, comma-separated;
- `release-fidelity` (default true): whether it reports fidelity statistics computed on its
  training embeddings at the end of a run;
- `noise-source` (default "secure"): where its private randomness comes from; "seeded" (from
  the run seed, which the coordinator knows) is a testing switch, recorded as such in the
  results.

A run whose settings exceed the policy is refused at its first message (the coordinator gets
one refusal naming the site and the rule) and at every later one. Whatever the policy, a site
trains at most the rounds its noise was calibrated for, and answers the end-of-run steps once.
The defaults are permissive so that `fl/run_local.py` and the simulation engine work as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from algorithms import registry
from algorithms.options import Settings
from algorithms.privacy import NOISE_SOURCES

POLICY_KEYS = (
    "max-epsilon",
    "max-delta",
    "allow-no-dp",
    "methods",
    "release-fidelity",
    "noise-source",
)


class PolicyError(ValueError):
    """A site's node config that cannot be read as a policy (the message names the key)."""


class Refusal(RuntimeError):
    """A site refuses a run or a message; the message names the site and the rule."""


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts. The defaults accept every run the Flower app can run."""

    max_epsilon: float = math.inf
    max_delta: float = 1.0
    allow_no_dp: bool = True
    methods: tuple[str, ...] = registry.flower_methods()
    release_fidelity: bool = True
    noise_source: str = "secure"


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


def _positive(node_config: dict, key: str, default: float) -> float:
    try:
        value = float(node_config.get(key, default))
    except (TypeError, ValueError):
        value = math.nan
    if not value > 0:
        raise PolicyError(f"node config: {key} must be a positive number, got {node_config[key]!r}")
    return value


def site_policy(node_config: dict) -> SitePolicy:
    """The policy in a node config (absent keys take the permissive defaults)."""
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
        methods=methods,
        release_fidelity=_flag(node_config, "release-fidelity", d.release_fidelity),
        noise_source=source,
    )


def policy_violation(policy: SitePolicy, settings: Settings) -> str | None:
    """The rule of `policy` that the run's settings break, in words; None if they keep it."""
    method = settings.method
    if method.name not in policy.methods:
        return f"--method {method.name} is not served (methods={','.join(policy.methods)})"
    dp = settings.configs.get("dp")
    shares_without_dp = not method.private or dp is None or not dp.enabled
    if shares_without_dp:
        if not policy.allow_no_dp:
            what = "--disable_dp" if dp is not None else f"--method {method.name} (not private)"
            return f"{what}: sharing without DP is forbidden (allow-no-dp=false)"
        return None
    if dp.epsilon > policy.max_epsilon:
        return f"--epsilon {dp.epsilon:g} exceeds max-epsilon {policy.max_epsilon:g}"
    if dp.delta > policy.max_delta:
        return f"--delta {dp.delta:g} exceeds max-delta {policy.max_delta:g}"
    if dp.calibration != "total" and math.isfinite(policy.max_epsilon):
        return (
            f"--dp_calibration {dp.calibration} spends more than --epsilon, and the site has a "
            f"max-epsilon ({policy.max_epsilon:g})"
        )
    return None
