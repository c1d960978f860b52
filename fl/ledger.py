"""One privacy ledger per site, on disk: every release a site makes is claimed here first.

Context.state is a per-task snapshot (two overlapping tasks of one run both see the same one,
and a restarted SuperNode or a new run starts empty), so it cannot guard a release. The ledger
can: one JSON file per site dataset (its database fingerprint and client id), in the directory
of the node-config key `ledger-dir` (default: `ledger/` next to the site's database). A claim
is checked and written under a file lock, atomically (temp file + os.replace), BEFORE anything
is computed: a claim already made, or one that would take the site over its budget, is refused.

The budget is per dataset, across runs: node-config keys `budget-epsilon` and `budget-delta`
(default: the policy's max-epsilon and max-delta; an infinite budget-epsilon means no limit).
Spent = basic composition of the ledger (the sum of the epsilons and of the deltas): simple and
conservative (tighter accountants would spend less). A run sharing without DP is recorded with
an infinite epsilon (JSON null).

    python -m fl.ledger LEDGER_DIR   # each dataset's budget, spent, left and releases
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from data.database import load_database
from data.partition import database_fingerprint
from fl.policy import PolicyError, Refusal, SitePolicy

SUFFIX = ".ledger.json"


class LedgerError(ValueError):
    """A ledger file that cannot be read (the message names the file)."""


@dataclass(frozen=True)
class Claim:
    """One release to claim: its unique key (within the ledger), what it is in words, and the
    privacy it spends (epsilon None: no DP, i.e. unbounded)."""

    key: str
    what: str
    epsilon: float | None = 0.0
    delta: float = 0.0
    once: bool = True  # False: claimed only if absent, never refused for being there (a charge)


def _eps(value: float | None) -> float:
    return math.inf if value is None else float(value)


def spent(claims: list[dict]) -> tuple[float, float]:
    """(epsilon, delta) of the claims under basic composition (sums; conservative)."""
    return sum(_eps(c["epsilon"]) for c in claims), sum(float(c["delta"]) for c in claims)


class Ledger:
    """The ledger file of one site's dataset, with its budget."""

    def __init__(
        self,
        directory: str | Path,
        fingerprint: str,
        site: int,
        budget_epsilon: float = math.inf,
        budget_delta: float = 1.0,
    ):
        self.directory = Path(directory)
        self.fingerprint, self.site = fingerprint, site
        self.budget = (budget_epsilon, budget_delta)
        self.path = self.directory / f"{fingerprint[:16]}-client{site}{SUFFIX}"

    def refuse(self, rule: str) -> None:
        raise Refusal(f"client {self.site}'s site refuses: {rule} (ledger {self.path})")

    def read(self) -> dict:
        """The ledger's content (empty if there is none yet)."""
        if not self.path.exists():
            return {"fingerprint": self.fingerprint, "site": self.site, "claims": []}
        return read_ledger(self.path)

    def claim(self, run_id: int, claims: list[Claim]) -> None:
        """Claim all of `claims` for run `run_id`, or none: refuse (Refusal) a key already
        claimed (unless it is a charge, `once=False`) or a total over the budget."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            book = self.read()
            have = {c["key"] for c in book["claims"]}
            new = []
            for c in claims:
                key = f"run {run_id}: {c.key}"
                if key in have:
                    if c.once:
                        self.refuse(f"{c.what} of run {run_id} was already released (once)")
                    continue
                entry = {"key": key, "run": run_id, "what": c.what, "time": time.time()}
                entry |= {"epsilon": c.epsilon, "delta": c.delta}
                new.append(entry)
            eps, delta = spent(book["claims"] + new)
            budget_eps, budget_delta = self.budget
            if new and math.isfinite(budget_eps) and (eps > budget_eps + 1e-9):
                self.refuse(
                    f"epsilon {eps:.4g} in all would exceed the dataset's budget-epsilon "
                    f"{budget_eps:g} (spent {spent(book['claims'])[0]:.4g})"
                )
            if new and delta > budget_delta + 1e-15:
                self.refuse(f"delta {delta:.4g} in all would exceed budget-delta {budget_delta:g}")
            book["budget"] = {"epsilon": _json_eps(budget_eps), "delta": budget_delta}
            book["claims"] += new
            self._write(book)

    def _write(self, book: dict) -> None:
        """Write atomically: a crash leaves the old ledger or the new one, never half of one."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(book, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _json_eps(value: float) -> float | None:
    return None if math.isinf(value) else value


def read_ledger(path: Path) -> dict:
    """A ledger file's content; LedgerError naming the file if it is not a ledger."""
    try:
        book = json.loads(path.read_text())
        claims = book["claims"]
        for c in claims:
            _eps(c["epsilon"]), float(c["delta"]), str(c["key"]), str(c["what"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{path}: not a readable privacy ledger ({type(e).__name__}: {e})") from e
    if not isinstance(claims, list):
        raise LedgerError(f"{path}: not a readable privacy ledger (claims is not a list)")
    return book


@functools.lru_cache(maxsize=4)
def _fingerprint(database_root: str) -> str:
    return database_fingerprint(load_database(database_root))


def _number(node_config: dict, key: str, default: float) -> float:
    try:
        value = float(node_config.get(key, default))
    except (TypeError, ValueError):
        value = math.nan
    if not value >= 0:
        raise PolicyError(f"node config: {key} must be a number >= 0, got {node_config[key]!r}")
    return value


def site_ledger(
    node_config: dict, database_root: str, client_id: int, policy: SitePolicy
) -> Ledger:
    """The ledger of this site's dataset, as its node config says (`ledger-dir`,
    `budget-epsilon`, `budget-delta`; defaults: `ledger/` next to the database, the policy's
    max-epsilon and max-delta)."""
    root = Path(database_root).resolve()
    directory = node_config.get("ledger-dir") or root.parent / "ledger"
    return Ledger(
        directory,
        _fingerprint(str(root)),
        client_id,
        _number(node_config, "budget-epsilon", policy.max_epsilon),
        _number(node_config, "budget-delta", policy.max_delta),
    )


def describe(path: Path) -> str:
    """A ledger file in plain words: budget, spent, left, and each release."""
    book = read_ledger(path)
    budget = book.get("budget", {})
    b_eps = _eps(budget.get("epsilon"))
    b_delta = float(budget.get("delta", 1.0))
    eps, delta = spent(book["claims"])
    lines = [
        f"dataset {book.get('fingerprint', '?')} (client {book.get('site', '?')}), {path}",
        f"  budget: epsilon {b_eps:g}, delta {b_delta:g}",
        f"  spent:  epsilon {eps:g}, delta {delta:g} (basic composition: sums)",
        f"  left:   epsilon {b_eps - eps:g}, delta {b_delta - delta:g}",
        f"  releases ({len(book['claims'])}):",
    ]
    for c in book["claims"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(c.get("time", 0))))
        cost = f"epsilon {_eps(c['epsilon']):g}, delta {float(c['delta']):g}"
        lines.append(f"    {when}  run {c.get('run', '?')}  {c['what']}  ({cost})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fl.ledger",
        description="Print a site's privacy ledgers: per dataset fingerprint, the budget, the "
        "epsilon and delta spent (basic composition), what is left, and each release (time, "
        "run id, what it was).",
    )
    parser.add_argument("ledger_dir", help="the site's ledger directory (node config ledger-dir)")
    return parser


def cli(argv: list[str] | None = None) -> int:
    """The ledger command; 2 (one error line naming the file) on a missing dir or bad file."""
    args = build_parser().parse_args(argv)
    directory = Path(args.ledger_dir)
    if not directory.is_dir():
        print(f"error: {directory}: no such ledger directory", file=sys.stderr)
        return 2
    files = sorted(directory.glob(f"*{SUFFIX}"))
    try:
        texts = [describe(p) for p in files]
    except LedgerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(texts) if texts else f"{directory}: no ledger yet (nothing released)")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
