"""A Flower site's ledger and policy in patients (issue 32; fl/units.py, fl/ledger.py): a
ledger's unit is fixed at init and survives reloads and `show`; on a patient ledger a
patient-level run is charged its epsilon and a record-level run is refused with a rule that
reads no count (or, under a public max-patient-records, charged its group bound); a record
ledger charges as before; the hello says the units, never a count."""

import json
import subprocess
import sys

import pytest
from flwr.app import Context, Message, RecordDict
from helpers.databases import make_gaussian_db, make_patient_db
from helpers.flower import DPCVAE, SEEDED, SMALL, hospital_node

from algorithms.options import load_settings
from algorithms.privacy.accounting import group_bound
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app
from fl.charge import run_binding, run_charge
from fl.ledger import (
    DEFAULT_BUDGET_DELTA,
    RECORD_ON_PATIENT,
    Charge,
    Claim,
    Ledger,
    LedgerError,
    booked,
    describe,
    read_ledger,
    spent,
)
from fl.ledger_cli import cli
from fl.policy import PolicyError, Refusal, SitePolicy, site_policy
from fl.supernode import SiteConfigError, check_node_config
from fl.units import RECORD_RUN_RULE, check_patient_cap, in_ledger_unit, run_unit
from utils.io import write_json

SHAPE = (16, 4)
PATIENT_RUN = ["--method", "dpcvae", "--preset", "dp"]  # auto: patient where ids exist
RECORD_RUN = [*PATIENT_RUN, "--privacy_unit", "record"]


def settings(*args: str):
    return load_settings(["--database_root", "/nowhere", "--n_clients", "2", *args])


def charged(policy, run, ledger_unit, has_ids=True):
    """The ledger's charge of `run` on a site (with or without patient ids) and its rule."""
    cost = run_charge(run, n_sites=2, shape=SHAPE)
    charge = booked(run_binding(run), policy, cost)
    return in_ledger_unit(charge, policy, ledger_unit, run_unit(run, has_ids))


def patient_ledger(tmp_path, epsilon=10.0, delta=DEFAULT_BUDGET_DELTA):
    ledger = Ledger(tmp_path / "ledgers", "hospital", 0)
    ledger.initialise(epsilon, delta, unit="patient")
    return ledger


def test_a_ledgers_unit_survives_reloads_and_show(tmp_path):
    patient_ledger(tmp_path)
    again = Ledger(tmp_path / "ledgers", "hospital", 0)
    assert again.unit() == "patient" and read_ledger(again.path)["unit"] == "patient"
    again.set_budget(5.0, 1e-3)  # a budget change keeps the unit
    assert Ledger(tmp_path / "ledgers", "hospital", 0).unit() == "patient"
    again.initialise(1.0, 1e-3, exist_ok=True, unit="record")  # init never changes it
    assert again.unit() == "patient"
    assert "unit:   patient (the budget is per patient)" in describe(again.path)
    done = subprocess.run(
        [sys.executable, "-m", "fl.ledger", "show", str(tmp_path / "ledgers")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "unit:   patient" in done.stdout and "init: budget 10, 0.001 per patient" in done.stdout


def test_a_ledger_without_a_unit_counts_records_and_a_bad_unit_is_refused(tmp_path):
    ledger = Ledger(tmp_path, "old", 0)
    assert ledger.unit() == "record"  # none yet
    ledger.initialise(10.0, 1e-3)
    book = json.loads(ledger.path.read_text())
    del book["unit"]  # a ledger written before units
    ledger.path.write_text(json.dumps(book))
    assert ledger.unit() == "record" and "unit:   record" in describe(ledger.path)
    book["unit"] = "visit"
    ledger.path.write_text(json.dumps(book))
    with pytest.raises(LedgerError, match="unit is one of patient, record"):
        ledger.unit()
    with pytest.raises(LedgerError, match="unit is one of"):
        Ledger(tmp_path, "new", 0).initialise(1.0, 1e-3, unit="visit")


def test_init_takes_its_default_unit_from_the_database(tmp_path, capsys):
    patients, plain = make_patient_db(tmp_path / "p"), make_gaussian_db(tmp_path / "g")
    where = str(tmp_path / "ledgers")
    assert cli(["init", where, "a", "--database_root", str(patients)]) == 0
    assert cli(["init", where, "b", "--database_root", str(plain)]) == 0
    assert cli(["init", where, "c"]) == 0
    assert cli(["init", where, "d", "--database_root", str(patients), "--unit", "record"]) == 0
    units = {i: Ledger(where, i, 0).unit() for i in "abcd"}
    assert units == {"a": "patient", "b": "record", "c": "record", "d": "record"}
    assert "(its budget is per patient)" in capsys.readouterr().out
    assert cli(["init", where, "e", "--database_root", str(tmp_path / "none")]) == 2
    assert "not a readable database" in capsys.readouterr().err


def test_a_patient_ledger_charges_a_patient_level_run_its_epsilon(tmp_path):
    ledger = patient_ledger(tmp_path)
    run = settings(*PATIENT_RUN)
    charge, rule = charged(SitePolicy(), run, "patient")
    assert rule is None and charge.unit == "patient" and charge.group_k is None
    assert (charge.epsilon, charge.delta) == (run.configs.dp.epsilon, run.configs.dp.delta)
    ledger.claim(1, charge, [Claim("train 0", "train round 1")])
    book = read_ledger(ledger.path)
    assert spent(book) == (run.configs.dp.epsilon, run.configs.dp.delta)
    assert book["runs"]["1"]["unit"] == "patient" and "group_k" not in book["runs"]["1"]


def test_a_record_level_run_on_a_patient_ledger_is_refused_whatever_the_data(tmp_path):
    """The rule reads the policy and the ledger's unit only: the same words with or without
    patient ids (a site without ids runs every run per record) and no count in them."""
    rules = {charged(SitePolicy(), settings(*RECORD_RUN), "patient", ids)[1] for ids in (1, 0)}
    rules.add(charged(SitePolicy(), settings(*PATIENT_RUN), "patient", False)[1])
    assert rules == {RECORD_RUN_RULE}
    assert "--privacy_unit" in RECORD_RUN_RULE
    assert not any(c.isdigit() for c in RECORD_RUN_RULE.replace("max-patient-records=0", ""))
    ledger = patient_ledger(tmp_path)  # the ledger refuses a per-record charge by itself
    with pytest.raises(Refusal, match="charged per patient"):
        ledger.claim(1, Charge("b" * 64, 1.0, 1e-5), [Claim("train 0", "train round 1")])
    assert RECORD_ON_PATIENT in ledger.violation(1, Charge("b" * 64, 1.0, 1e-5))
    assert spent(read_ledger(ledger.path)) == (0, 0)


def test_max_patient_records_charges_the_group_bound_of_its_public_cap(tmp_path):
    assert site_policy({}).max_patient_records == 0
    assert site_policy({"max-patient-records": "3"}).max_patient_records == 3
    with pytest.raises(PolicyError, match="max-patient-records must be a whole number >= 0"):
        site_policy({"max-patient-records": "-1"})
    run = settings(*RECORD_RUN)
    eps, delta = run.configs.dp.epsilon, run.configs.dp.delta
    loose = SitePolicy(max_patient_records=3, max_delta=1.0)
    charge, rule = charged(loose, run, "patient")
    assert rule is None and charge.group_k == 3 and charge.unit == "patient"
    assert (charge.epsilon, charge.delta) == group_bound(eps, delta, 3)
    ledger = patient_ledger(tmp_path, delta=1.0)
    ledger.claim(1, charge, [Claim("train 0", "train round 1")])
    assert read_ledger(ledger.path)["runs"]["1"]["group_k"] == 3
    assert "group bound for 3 records per patient" in describe(ledger.path)
    _, rule = charged(SitePolicy(max_patient_records=3), run, "patient")  # max-delta 1e-4
    assert rule and rule.startswith("delta ") and "exceeds max-delta 0.0001" in rule
    _, rule = charged(SitePolicy(max_patient_records=3, max_epsilon=2.0), run, "patient")
    assert rule and "exceeds max-epsilon 2" in rule


def test_the_cap_is_checked_against_the_largest_patient_without_naming_it():
    check_patient_cap(SitePolicy(max_patient_records=3), "patient", 3)
    check_patient_cap(SitePolicy(), "patient", 7)  # 0: record runs refused, nothing to check
    check_patient_cap(SitePolicy(max_patient_records=2), "record", 7)  # a record ledger
    with pytest.raises(PolicyError) as err:
        check_patient_cap(SitePolicy(max_patient_records=2), "patient", 7)
    assert "7" not in str(err.value) and "max-patient-records" in str(err.value)


def test_a_record_ledger_charges_every_run_as_before():
    for args in (PATIENT_RUN, RECORD_RUN):
        run = settings(*args)
        cost = run_charge(run, n_sites=2, shape=SHAPE)
        charge, rule = charged(SitePolicy(), run, "record")
        assert rule is None and charge.group_k is None
        assert (charge.epsilon, charge.delta) == (cost.epsilon, cost.delta)


def hello(db, tmp_path, *args, **keys):
    """A deployed site's hello (client 0 of two, its ledger per patient) for a run."""
    split = db / "split.json"
    if not split.exists():
        write_json(split, split_database(load_database(db), SplitConfig(n_clients=2)))
    Ledger(db.parent / "site-ledger", "hospital0", 0).initialise(10.0, 1e-3, True, "patient")
    node = hospital_node(db, split, 0, **SEEDED, **keys)
    argv = ["--database_root", str(db), "--split_file", str(split), *SMALL, *args]
    config = {"main-args": " ".join([*argv, "--results_dir", str(tmp_path / "r")])}
    context = Context(1, 1000, node, RecordDict(), config)
    reply = client_app.app(Message(RecordDict(), 1000, "query", group_id="g"), context)
    records = reply.content.config_records
    rule = str(records["refusal"]["rule"]) if "refusal" in records else None
    return rule, dict(records["unit"])


def test_a_site_hello_says_its_units_and_refuses_record_runs_alike(tmp_path, task_identity):
    """Two sites whose largest patients differ (3 and 5 records) answer a record-level run
    with the same words, and a patient-level run with its units, never a count."""
    small, large = make_patient_db(tmp_path / "a" / "db"), make_patient_db(tmp_path / "b" / "db", 5)
    run = [*DPCVAE, "--delta", "1e-5"]
    for db in (small, large):
        rule, units = hello(db, tmp_path, *run)
        assert rule is None and units == {"protects": "patient", "ledger": "patient"}
    answers = [hello(db, tmp_path, *run, "--privacy_unit", "record") for db in (small, large)]
    assert answers == [(RECORD_RUN_RULE, {"protects": "record", "ledger": "patient"})] * 2
    with pytest.raises(PolicyError, match="max-patient-records is below"):
        hello(large, tmp_path, *run, **{"max-patient-records": 3})
    rule, _ = hello(small, tmp_path, *run, "--privacy_unit", "record", **{"max-patient-records": 3})
    assert rule and "exceeds max-delta" in rule  # the group bound of 3, 1e-5 is over 1e-4


def test_the_supernode_check_says_the_unit_and_checks_the_cap(tmp_path):
    """At start (on the site, before any coordinator asks): the summary names the ledger's unit,
    and a max-patient-records below the site's largest patient (5 records) is an error."""
    db = make_patient_db(tmp_path / "db", per_patient=5)
    split = db / "split.json"
    write_json(split, split_database(load_database(db), SplitConfig(n_clients=2)))
    Ledger(tmp_path / "site-ledger", "hospital0", 0).initialise(10.0, 1e-3, unit="patient")
    node = hospital_node(db, split, 0)
    assert check_node_config(node).endswith("spent 0 (per patient)")
    assert check_node_config({**node, "max-patient-records": 5}).endswith("(per patient)")
    with pytest.raises(SiteConfigError, match="max-patient-records is below"):
        check_node_config({**node, "max-patient-records": 4})
