"""A site's side of secure aggregation's two guarantees (issue 31; fl/policy.py, fl/charge.py,
fl/ledger.py): the least m a site serves (`min-honest-sites`), which epsilon its ledger charges
and max-epsilon caps (`charge-honest`), and the ledger entries that record both."""

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
from flwr.app import Context, Message, RecordDict
from helpers.flower import DPCVAE, SEEDED, SMALL, hospital_node

from algorithms.methods.pft_server import pft_plan
from algorithms.options import UsageError, load_settings
from algorithms.privacy.secure_dpsgd import secure_privacy
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app
from fl.charge import run_binding, run_charge
from fl.ledger import Claim, Ledger, booked, describe, read_ledger, spent
from fl.policy import PolicyError, SitePolicy, assess, charged_epsilon, site_policy
from utils.io import write_json

SHAPE = (16, 4)  # the embedding size and classes of a small database
CVAE = ["--method", "dpcvae", "--preset", "dp", "--n_fedavg_rounds", "3"]
PFT = ["--method", "dpfedpft"]


def settings(*args: str, sites: int = 3):
    """A run's settings (the policy reads no database)."""
    return load_settings(["--database_root", "/nowhere", "--n_clients", str(sites), *args])


def secure(method=CVAE, m=2, sites=3):
    return settings(*method, "--secure_aggregation", "--min_honest_sites", str(m), sites=sites)


def verdict(policy, run, sites=3):
    """The charge of `run` on a site with `policy` and the rule it breaks (None: served)."""
    return assess(policy, run, n_sites=sites, shape=SHAPE)


def test_the_policy_reads_min_honest_sites_and_charge_honest():
    assert site_policy({}).min_honest_sites == 1 and not site_policy({}).charge_honest
    policy = site_policy({"min-honest-sites": "3", "charge-honest": "true"})
    assert policy.min_honest_sites == 3 and policy.charge_honest
    for bad in ("0", "1.5", "two", "-1"):
        with pytest.raises(PolicyError, match="node config: min-honest-sites"):
            site_policy({"min-honest-sites": bad})
    with pytest.raises(PolicyError, match="node config: charge-honest"):
        site_policy({"charge-honest": "maybe"})


def test_a_run_with_fewer_honest_sites_than_the_sites_is_refused():
    _, rule = verdict(SitePolicy(min_honest_sites=3), secure(m=2))
    assert rule == "--min_honest_sites 2 is below min-honest-sites 3"


def test_a_plain_run_is_refused_where_the_site_demands_shares():
    for run in (settings(*CVAE), settings(*PFT)):
        _, rule = verdict(SitePolicy(min_honest_sites=2), run)
        assert rule and "without --secure_aggregation" in rule and "min-honest-sites 2" in rule
        assert verdict(SitePolicy(), run)[1] is None  # m = 1: served as before


def test_an_equal_or_greater_m_is_served():
    for m in (2, 3):
        for method in (CVAE, PFT):
            assert verdict(SitePolicy(min_honest_sites=2), secure(method, m=m))[1] is None


def test_a_secure_run_without_a_plan_is_refused_in_one_line():
    _, rule = verdict(SitePolicy(), secure(m=4))  # m above the 3 sites of a sum
    assert rule and rule.startswith("--min_honest_sites 4") and "\n" not in rule
    # a method without a secure round never becomes a run's settings (options.check_secure)
    with pytest.raises(UsageError, match="--secure_aggregation: dpcgan has no secure round"):
        secure(["--method", "dpcgan", "--preset", "dp"])
    # a method whose secure round has no plan at a Flower site is refused without a claim
    fedavg = ["--method", "dpfedavg", "--fedavg_local_epochs", "1", "--bz", "100000"]
    charge, rule = verdict(SitePolicy(), secure(fedavg))
    assert rule and "dpfedavg" in rule and "\n" not in rule
    assert charge.epsilon is None


def test_the_charge_holds_both_epsilons_of_the_clients_plan():
    """dpfedpft's plan is the client's (pft_plan with the run's sites and seed): the site's two
    epsilons are the privacy line its client reports after its one release."""
    run = secure(PFT, m=2, sites=3)
    charge = run_charge(run, n_sites=3, shape=SHAPE)
    dp = run.configs.dp
    plan = pft_plan("dpfedpft", run.configs.pft, dp, SHAPE, (3, run.seed))
    line = secure_privacy(plan, 1, dp.delta, None)
    assert (charge.epsilon, charge.epsilon_collusion) == (
        line["epsilon"],
        line["epsilon_collusion"],
    )
    assert charge.min_honest_sites == 2 and charge.delta == dp.delta
    assert charge.epsilon <= dp.epsilon < charge.epsilon_collusion


def test_the_ledger_charges_the_collusion_epsilon_unless_charge_honest():
    charge = run_charge(secure(m=2), n_sites=3, shape=SHAPE)
    assert charge.epsilon <= 1.0 < charge.epsilon_collusion  # the target is --epsilon 1
    assert charged_epsilon(SitePolicy(), charge) == charge.epsilon_collusion
    assert charged_epsilon(SitePolicy(charge_honest=True), charge) == charge.epsilon
    plain = run_charge(settings(*CVAE), n_sites=3, shape=SHAPE)
    assert (plain.epsilon, plain.epsilon_collusion) == (1.0, None)
    assert (
        charged_epsilon(SitePolicy(), plain)
        == charged_epsilon(SitePolicy(charge_honest=True), plain)
        == 1.0
    )
    one = run_charge(secure(m=1), n_sites=3, shape=SHAPE)  # every site adds the whole noise
    assert one.epsilon == one.epsilon_collusion


def test_max_epsilon_caps_the_charged_epsilon():
    run = secure(m=2)
    charge = run_charge(run, n_sites=3, shape=SHAPE)
    between = (1.0 + charge.epsilon_collusion) / 2  # above the target, below the collusion one
    _, rule = verdict(SitePolicy(max_epsilon=between), run)
    assert rule and rule.startswith("epsilon_collusion") and f"max-epsilon {between:g}" in rule
    assert verdict(SitePolicy(max_epsilon=between, charge_honest=True), run)[1] is None
    _, rule = verdict(SitePolicy(max_epsilon=0.5, charge_honest=True), run)
    assert rule == "--epsilon 1 exceeds max-epsilon 0.5"  # the target itself, as before


def test_the_ledger_records_both_epsilons_and_charges_one(tmp_path):
    charge = run_charge(secure(m=2), n_sites=3, shape=SHAPE)
    ledger = Ledger(tmp_path, "hospital", 0)
    ledger.initialise(10.0, 1e-3)
    for run_id, policy in ((1, SitePolicy()), (2, SitePolicy(charge_honest=True))):
        ledger.claim(run_id, booked(f"{run_id}" * 64, policy, charge), [Claim("train 0", "r1")])
    runs = read_ledger(ledger.path)["runs"]
    for entry in runs.values():
        assert entry["epsilon_honest"] == charge.epsilon
        assert entry["epsilon_collusion"] == charge.epsilon_collusion
        assert entry["min_honest_sites"] == 2
    assert (
        runs["1"]["epsilon"] == charge.epsilon_collusion
        and runs["1"]["charged"] == "epsilon_collusion"
    )
    assert runs["2"]["epsilon"] == charge.epsilon and runs["2"]["charged"] == "epsilon"
    eps, _ = spent(read_ledger(ledger.path))
    assert eps == pytest.approx(charge.epsilon + charge.epsilon_collusion)
    text = describe(ledger.path)
    assert f"epsilon {charge.epsilon:.4g} with 2 honest sites" in text
    assert f"{charge.epsilon_collusion:.4g} against collusion, charged epsilon_collusion" in text
    shown = subprocess.run(
        [sys.executable, "-m", "fl.ledger", "show", str(tmp_path)], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "against collusion" in shown.stdout


def test_a_plain_runs_ledger_entry_is_as_before(tmp_path):
    charge = run_charge(settings(*CVAE), n_sites=3, shape=SHAPE)
    ledger = Ledger(tmp_path, "hospital", 0)
    ledger.initialise(10.0, 1e-3)
    ledger.claim(1, booked("b" * 64, SitePolicy(), charge), [Claim("train 0", "r1")])
    (entry,) = read_ledger(ledger.path)["runs"].values()
    assert set(entry) == {"binding", "epsilon", "delta", "what", "time"}
    assert "collusion" not in describe(ledger.path)


def test_bindings_hash_secure_aggregation_only_when_set():
    """A run without secure aggregation keeps the binding it had before the fields existed."""
    for run in (settings(*CVAE), settings(*PFT), settings("--method", "fedavg")):
        configs = {
            f.name: dataclasses.asdict(cfg)
            for f in dataclasses.fields(run.configs)
            if (cfg := getattr(run.configs, f.name)) is not None
        }
        if "dp" in configs:
            del configs["dp"]["secure_aggregation"], configs["dp"]["min_honest_sites"]
        text = json.dumps(
            {"method": run.method.name, "seed": run.seed, "configs": configs},
            sort_keys=True,
            default=str,
        )
        assert run_binding(run) == hashlib.sha256(text.encode()).hexdigest()
    bindings = {run_binding(secure(m=m)) for m in (1, 2, 3)} | {run_binding(settings(*CVAE))}
    assert len(bindings) == 4


def test_a_deployed_site_answers_hello_by_its_min_honest_sites(gauss_db, tmp_path, task_identity):
    """The ClientApp's hello (free, nothing claimed): a site that demands m = 2 refuses a plain
    DP run and takes a secure one with m = 2 over the run's two sites."""
    split = gauss_db / "split.json"
    write_json(split, split_database(load_database(gauss_db), SplitConfig(n_clients=2)))
    node = hospital_node(gauss_db, split, 0, **SEEDED, **{"min-honest-sites": 2})

    def hello(*args: str):
        argv = ["--database_root", str(gauss_db), "--split_file", str(split), *SMALL, *args]
        config = {"main-args": " ".join([*argv, "--results_dir", str(tmp_path / "r")])}
        context = Context(1, 1000, node, RecordDict(), config)
        reply = client_app.app(Message(RecordDict(), 1000, "query", group_id="g"), context)
        records = reply.content.config_records
        return str(records["refusal"]["rule"]) if "refusal" in records else None

    rule = hello(*DPCVAE, "--delta", "1e-5")
    assert rule and "without --secure_aggregation" in rule and "min-honest-sites 2" in rule
    assert hello(*PFT, "--delta", "1e-5", "--secure_aggregation", "--min_honest_sites", "2") is None
    rule = hello(*PFT, "--delta", "1e-5", "--secure_aggregation", "--min_honest_sites", "3")
    assert rule and rule.startswith("--min_honest_sites 3") and "2 sites" in rule
