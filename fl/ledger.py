"""One privacy ledger per site dataset, on disk: every release a site makes is claimed here first.

Context.state is a per-task snapshot (two overlapping tasks of one run both see the same one,
and a restarted SuperNode or a new run starts empty), so it cannot guard a release. The ledger
can: one JSON file per dataset, named by the node-config key `dataset-id` (what the site says
its dataset is, so one hospital's records have one budget whatever their encoding), in the
folder `ledger-dir`. A claim is checked and written under a file lock, atomically (temp file +
os.replace), BEFORE anything is computed: a claim already made, one that would take the site
over its budget, or a run ID claimed before under another binding (another run config) is
refused.

The budget lives in the ledger: set when the operator initialises it (`init`), changed only by
the `budget` command (logged); a missing ledger is a refusal, never a fresh budget. Spent =
basic composition of the runs' charges (sums of epsilons and deltas): conservative. A run
sharing without DP is charged an infinite epsilon (JSON null). A run under secure aggregation
has two epsilons (with m honest sites in every sum, and against a coordinator colluding with
every other site); its entry records both, and `epsilon` is the one charged
(fl.policy.charged_epsilon: the collusion epsilon unless the node config sets charge-honest).
A ledger counts per patient or per record (its `unit`, set at `init`, record when absent): on
a patient ledger every charge is per patient (fl/units.py).

    python -m fl.ledger init LEDGER_DIR DATASET_ID [--epsilon 10] [--delta 1e-3]
        [--unit patient|record] [--database_root DB]   # unit: DB's (patient ids?), else record
    python -m fl.ledger budget LEDGER_DIR DATASET_ID --epsilon E [--delta D]
    python -m fl.ledger show LEDGER_DIR   # each dataset's budget, spent, left and releases
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from fl.charge import RunCharge
from fl.policy import DEFAULT_MAX_DELTA, Refusal, SitePolicy, charged_epsilon

SUFFIX = ".ledger.json"
# A new ledger's lifetime budget (`init`'s defaults): epsilon 10 in all (one run at the default
# max-epsilon, or ten at epsilon 1), and delta for ten runs at the default max-delta.
DEFAULT_BUDGET_EPSILON = 10.0
DEFAULT_BUDGET_DELTA = 10 * DEFAULT_MAX_DELTA
NOT_INITIALISED = (
    "its privacy ledger is not initialised (the operator runs python -m fl.ledger init): a "
    "missing ledger is never a fresh budget"
)
DATASET_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UNITS = ("patient", "record")  # what a ledger's budget counts: a patient's records, or a record
RECORD_ON_PATIENT = (
    "a record-level run on a ledger counted per patient must be charged per patient "
    "(max-patient-records)"
)


class LedgerError(ValueError):
    """A ledger file or command that cannot be read (the message names the file or value)."""


@dataclass(frozen=True)
class Claim:
    """One release to claim: its unique key within the run, and what it is in words."""

    key: str
    what: str


@dataclass(frozen=True)
class Charge:
    """What a run spends on the site, bound to the run ID at its first claim: its binding (a
    hash of every setting that determines the spend, fl.charge.run_binding) and its (epsilon,
    delta) as the site computes them (epsilon None: no DP, unbounded): the epsilon charged. A
    secure run also records both of its epsilons and m (`secure`, else None). `unit`: what the
    charge is per (patient, or record); `group_k`: set when it is a record-level run's group
    bound for that many records per patient (fl/units.py)."""

    binding: str
    epsilon: float | None
    delta: float
    what: str = "run"
    secure: RunCharge | None = None
    charges_honest: bool = False  # a secure run: its epsilon with m honest sites is charged
    unit: str = "record"
    group_k: int | None = None


def booked(binding: str, policy: SitePolicy, charge: RunCharge) -> Charge:
    """The ledger's charge of a run: the epsilon the policy charges (`charged_epsilon`), with
    both epsilons of a secure run recorded."""
    secure = charge if charge.secure else None
    epsilon = charged_epsilon(policy, charge)
    honest = policy.charge_honest
    return Charge(binding, epsilon, charge.delta, secure=secure, charges_honest=honest)


def secure_entry(charge: Charge) -> dict:
    """A secure run's fields of its ledger entry (nothing for another run)."""
    if charge.secure is None:
        return {}
    both = charge.secure
    return {
        "epsilon_honest": both.epsilon,
        "epsilon_collusion": both.epsilon_collusion,
        "min_honest_sites": both.min_honest_sites,
        "charged": "epsilon" if charge.charges_honest else "epsilon_collusion",
    }


def per_patient_entry(charge: Charge) -> dict:
    """A charge per patient's fields of its ledger entry (nothing for one per record: entries
    read as before): its unit, and the records per patient of a group bound."""
    if charge.unit != "patient":
        return {}
    return {"unit": "patient", **({} if charge.group_k is None else {"group_k": charge.group_k})}


def _eps(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _json_eps(value: float) -> float | None:
    return None if math.isinf(value) else value


def spent(book: dict) -> tuple[float, float]:
    """(epsilon, delta) of the ledger's runs under basic composition (sums; conservative)."""
    runs = book["runs"].values()
    return sum(_eps(r["epsilon"]) for r in runs), sum(float(r["delta"]) for r in runs)


def check_dataset_id(dataset_id: str) -> str:
    if not DATASET_ID.match(str(dataset_id)):
        raise LedgerError(
            f"dataset-id {dataset_id!r}: use 1 to 128 letters, digits, '.', '_' or '-'"
        )
    return str(dataset_id)


def check_unit(unit: str) -> str:
    """`unit` if it is a ledger's unit; LedgerError naming the choices otherwise."""
    if unit not in UNITS:
        raise LedgerError(f"a ledger's unit is one of {', '.join(UNITS)}, got {unit!r}")
    return unit


class Ledger:
    """The ledger file of one site's dataset."""

    def __init__(self, directory: str | Path, dataset_id: str, site: int):
        self.directory = Path(directory)
        self.dataset_id, self.site = check_dataset_id(dataset_id), site
        self.path = self.directory / f"{self.dataset_id}{SUFFIX}"

    def refuse(self, rule: str) -> None:
        """A Refusal naming the rule: never the ledger's path (it stays on the site)."""
        raise Refusal(f"client {self.site}'s site refuses: {rule}")

    def read(self) -> dict:
        """The ledger's content; a refusal if it was never initialised (or was deleted)."""
        if not self.path.exists():
            self.refuse(NOT_INITIALISED)
        return read_ledger(self.path)

    def initialise(
        self, epsilon: float, delta: float, exist_ok: bool = False, unit: str = "record"
    ) -> None:
        """Create the ledger with its lifetime budget, per `unit` (patient or record; fixed for
        the ledger's life); refused if it exists, unless exist_ok."""
        check_budget(epsilon, delta)
        check_unit(unit)
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            if self.path.exists():
                if exist_ok:
                    return
                raise LedgerError(f"{self.path}: the ledger exists already (change it: budget)")
            book = {"dataset_id": self.dataset_id, "site": self.site, "runs": {}, "claims": []}
            book["budget"] = {"epsilon": _json_eps(epsilon), "delta": delta}
            book["unit"] = unit
            init = f"init: budget {epsilon:g}, {delta:g} per {unit}"
            book["log"] = [{"time": time.time(), "what": init}]
            self._write(book)

    def set_budget(self, epsilon: float, delta: float) -> None:
        """Change the lifetime budget (logged); the only way it changes."""
        check_budget(epsilon, delta)
        with FileLock(str(self.path) + ".lock"):
            book = self.read()
            old = book["budget"]
            book["budget"] = {"epsilon": _json_eps(epsilon), "delta": delta}
            line = f"budget: epsilon {_eps(old['epsilon']):g} -> {epsilon:g}, delta "
            book["log"].append(
                {"time": time.time(), "what": f"{line}{old['delta']:g} -> {delta:g}"}
            )
            self._write(book)

    def budget(self) -> tuple[float, float]:
        book = self.read()
        return _eps(book["budget"]["epsilon"]), float(book["budget"]["delta"])

    def unit(self) -> str:
        """What the ledger's budget counts: patient or record (a ledger without one, or none yet:
        record, as every ledger counted before units)."""
        return str(self.read().get("unit", "record")) if self.path.exists() else "record"

    def violation(self, run_id: int, charge: Charge) -> str | None:
        """The rule the run would break if it were claimed now, in words; None if it would be
        accepted. Free and read-only: it reads the ledger, never the data."""
        if not self.path.exists():
            return NOT_INITIALISED
        book = self.read()
        run = book["runs"].get(str(run_id))
        if run is not None:
            if run["binding"] != charge.binding:
                return (
                    f"run {run_id} was claimed before with another run config: a run ID "
                    "is bound to the settings of its first claim"
                )
            return None
        per_record = charge.unit != "patient" and charge.epsilon is not None
        if book.get("unit") == "patient" and per_record:
            return RECORD_ON_PATIENT
        eps, delta = spent(book)
        budget_eps, budget_delta = _eps(book["budget"]["epsilon"]), float(book["budget"]["delta"])
        if eps + _eps(charge.epsilon) > budget_eps + 1e-9:
            return (
                f"epsilon {eps + _eps(charge.epsilon):.4g} in all would exceed the dataset's "
                f"budget {budget_eps:g} (spent {eps:.4g})"
            )
        if delta + charge.delta > budget_delta * (1 + 1e-9):
            return (
                f"delta {delta + charge.delta:.4g} in all would exceed the dataset's budget "
                f"{budget_delta:g} (spent {delta:.4g})"
            )
        return None

    def claim(self, run_id: int, charge: Charge, claims: list[Claim]) -> None:
        """Charge run `run_id` (at its first claim) and claim all of `claims`, or nothing:
        refuse a claim made before, another binding for the run ID, or a total over budget."""
        with FileLock(str(self.path) + ".lock"):
            book = self.read()
            rule = self.violation(run_id, charge)
            if rule:
                self.refuse(rule)
            have = {c["key"] for c in book["claims"]}
            now = time.time()
            new = []
            for c in claims:
                key = f"run {run_id}: {c.key}"
                if key in have:
                    self.refuse(f"{c.what} of run {run_id} was already released (once)")
                new.append({"key": key, "run": run_id, "what": c.what, "time": now})
            if str(run_id) not in book["runs"]:
                book["runs"][str(run_id)] = {
                    "binding": charge.binding,
                    "epsilon": charge.epsilon,
                    "delta": charge.delta,
                    "what": charge.what,
                    "time": now,
                    **per_patient_entry(charge),
                    **secure_entry(charge),
                }
            book["claims"] += new
            self._write(book)

    def claimed(self, run_id: int, prefix: str) -> list[str]:
        """The keys of run `run_id` claimed so far that start with `prefix`."""
        head = f"run {run_id}: "
        keys = [c["key"][len(head) :] for c in self.read()["claims"] if c["key"].startswith(head)]
        return [k for k in keys if k.startswith(prefix)]

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


def check_budget(epsilon: float, delta: float) -> None:
    if not epsilon > 0 or not 0 < delta <= 1:
        raise LedgerError(
            "a budget needs epsilon > 0 and 0 < delta <= 1, "
            f"got epsilon {epsilon:g}, delta {delta:g}"
        )


def read_ledger(path: Path) -> dict:
    """A ledger file's content; LedgerError naming the file if it is not a ledger."""
    try:
        book = json.loads(path.read_text())
        runs, claims, budget = book["runs"], book["claims"], book["budget"]
        check_unit(book.get("unit", "record"))
        _eps(budget["epsilon"]), float(budget["delta"])
        for r in runs.values():
            _eps(r["epsilon"]), float(r["delta"]), str(r["binding"])
            if "epsilon_collusion" in r:
                float(r["epsilon_honest"]), float(r["epsilon_collusion"])
        for c in claims:
            str(c["key"]), str(c["what"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise LedgerError(f"{path}: not a readable privacy ledger ({type(e).__name__}: {e})") from e
    if not isinstance(claims, list) or not isinstance(book.get("log", []), list):
        raise LedgerError(f"{path}: not a readable privacy ledger (claims is not a list)")
    return book


def describe(path: Path) -> str:
    """A ledger file in plain words: budget, spent, left, each run and release, the log."""
    book = read_ledger(path)
    b_eps, b_delta = _eps(book["budget"]["epsilon"]), float(book["budget"]["delta"])
    eps, delta = spent(book)
    lines = [
        f"dataset {book.get('dataset_id', '?')} (client {book.get('site', '?')}), {path}",
        f"  unit:   {book.get('unit', 'record')} (the budget is per {book.get('unit', 'record')})",
        f"  budget: epsilon {b_eps:g}, delta {b_delta:g}",
        f"  spent:  epsilon {eps:g}, delta {delta:g} (basic composition: sums)",
        f"  left:   epsilon {b_eps - eps:g}, delta {b_delta - delta:g}",
        f"  runs ({len(book['runs'])}):",
    ]
    for run_id, r in book["runs"].items():
        cost = f"epsilon {_eps(r['epsilon']):g}, delta {float(r['delta']):g}"
        if "epsilon_collusion" in r:
            cost += (
                f"; secure aggregation: epsilon {r['epsilon_honest']:.4g} with "
                f"{r.get('min_honest_sites', '?')} honest sites, {r['epsilon_collusion']:.4g} "
                f"against collusion, charged {r.get('charged', '?')}"
            )
        if "group_k" in r:
            cost += f"; a record-level run, its group bound for {r['group_k']} records per patient"
        lines.append(f"    {_when(r.get('time'))}  run {run_id}  {r['what']}  ({cost})")
    lines.append(f"  releases ({len(book['claims'])}):")
    for c in book["claims"]:
        lines.append(f"    {_when(c.get('time'))}  run {c.get('run', '?')}  {c['what']}")
    lines.append("  log:")
    lines += [f"    {_when(e.get('time'))}  {e['what']}" for e in book.get("log", [])]
    return "\n".join(lines)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t or 0)))


if __name__ == "__main__":  # python -m fl.ledger: the command (fl/ledger_cli.py)
    from fl.ledger_cli import cli

    sys.exit(cli())
