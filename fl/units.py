"""The unit a site's privacy ledger counts in, patient or record, and what a run costs in it.

A ledger's unit is fixed when the operator initialises it (`python -m fl.ledger init`, `--unit`;
by default patient where the database given has patient ids, else record), so its budget is an
(epsilon, delta) per patient or per record. What a run protects on the site (`run_unit`) is the
site's own resolution of the run's privacy unit (auto: patient where its data has patient ids
and the method's client supports it), as its client resolves it.

On a patient ledger a patient-level run is charged its (epsilon, delta). A record-level run is
refused unless the node config's `max-patient-records` N >= 1 states, publicly, that no patient
has more than N training records on the site; then it is charged the group bound for N records,
(N epsilon, N e^((N-1) epsilon) delta), within max-epsilon and max-delta. The site never charges
by its own largest patient's record count k: a charge (and so a budget refusal in the hello
answer) that depended on k would reveal it. It checks N >= k when it loads its data, a
node-config error whatever the run (`check_patient_cap`). A record ledger charges every run as
before: a guarantee per patient holds for each of the patient's records too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from algorithms.options import Settings
from algorithms.privacy.accounting import group_bound
from algorithms.privacy.config import DPConfig, privacy_unit
from algorithms.run_files import shares_dp
from fl.ledger import Charge
from fl.policy import PolicyError, SitePolicy
from utils.cli import flag_name


def run_unit(settings: Settings, has_ids: bool) -> str:
    """What the run protects on a site whose data has (or lacks) patient ids: patient or record
    (a run without DP: record), resolved as the site's client resolves `--privacy_unit`;
    ValueError (one line naming the flag) for patient where it cannot be."""
    dp = settings.configs.dp
    if dp is None or not shares_dp(settings):
        return "record"
    return privacy_unit(dp, settings.method.client or object, has_ids)


def largest_patient(patients: np.ndarray | None) -> int:
    """The most training records one patient has (1 without patient ids). Stays on the site."""
    if patients is None or len(patients) == 0:
        return 1
    return int(np.unique(patients, return_counts=True)[1].max())


def check_patient_cap(policy: SitePolicy, ledger_unit: str, largest: int) -> None:
    """A node-config error when a patient ledger's max-patient-records (set: >= 1) is below the
    site's largest patient: its record-level runs would be charged too little. Whatever the
    run, so the coordinator learns only that the node config is wrong."""
    cap = policy.max_patient_records
    if ledger_unit == "patient" and 0 < cap < largest:
        raise PolicyError(
            "node config: max-patient-records is below the training records of a patient of "
            "the site (its record-level runs would be charged too little)"
        )


# The rule a record-level run breaks on a patient ledger under max-patient-records=0: from the
# policy and the ledger's unit alone (no count of the data).
RECORD_RUN_RULE = (
    "a record-level run is refused: the site's ledger counts per patient "
    f"(max-patient-records=0): run at the patient unit ({flag_name(DPConfig, 'privacy_unit')} "
    "auto or patient, a method that supports it)"
)


def in_ledger_unit(
    charge: Charge, policy: SitePolicy, ledger_unit: str, unit: str
) -> tuple[Charge, str | None]:
    """The run's charge in the ledger's unit and the rule it breaks (None: none): a record-level
    run on a patient ledger is refused, or charged the group bound for max-patient-records, which
    max-epsilon and max-delta cap. Any other run's charge is unchanged. `charge`: the ledger's
    Charge (fl.ledger.booked); `unit`: what the run protects (`run_unit`)."""
    charge = dataclasses.replace(charge, unit=unit)
    if ledger_unit != "patient" or unit == "patient" or charge.epsilon is None:
        return charge, None  # an unbounded charge: refused by any finite budget
    k = policy.max_patient_records
    if k < 1:
        return charge, RECORD_RUN_RULE
    epsilon, delta = group_bound(charge.epsilon, charge.delta, k)
    bounded = dataclasses.replace(charge, epsilon=epsilon, delta=delta, unit="patient", group_k=k)
    what = f"the group bound for max-patient-records {k} of a record-level run"
    if epsilon > policy.max_epsilon:
        return bounded, f"epsilon {epsilon:.4g}, {what}, exceeds max-epsilon {policy.max_epsilon:g}"
    if delta > policy.max_delta:
        return bounded, f"delta {delta:.4g}, {what}, exceeds max-delta {policy.max_delta:g}"
    return bounded, None
