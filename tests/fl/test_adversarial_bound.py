"""A site's lifetime bound against a hostile coordinator (the second deployment review): run-ID
reuse under another config, the default budget, a delta search for n, crafted one-class models,
errors that would leak a bit, the paper's calibration, a deleted ledger, group-id variation,
node configs that misspell or omit keys, a DP method that trusts its registry entry, and a run
that one site refuses. Each test sends what the hostile coordinator would send, to the
ClientApp's handlers (as tests/fl/test_adversarial_site.py does)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from helpers.databases import make_gaussian_db
from helpers.flower import DPCVAE, FEDAVG, SEEDED, SMALL, InProcessGrid, hospital_node
from helpers.paths import REPO

from algorithms.methods import registry
from algorithms.methods.fedavg import FedAvgClient
from algorithms.methods.generative import initial_global_weights
from algorithms.presets import flags as preset_flags
from algorithms.privacy.accounting import NOT_COVERED, not_covered_markdown
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app, server_app
from fl.ledger import DEFAULT_BUDGET_DELTA, Ledger, spent
from fl.policy import (
    DEFAULT_MAX_DELTA,
    NODE_KEYS,
    PERMISSIVE,
    PolicyError,
    Refusal,
    SitePolicy,
    node_keys_table,
    site_policy,
)
from fl.records import weights_record
from fl.settings import run_settings
from utils.io import write_json
from utils.results import read_metrics

PRIVATE = [*DPCVAE, "--delta", "1e-5"]


def split_of(db):
    if not (db / "split.json").exists():
        write_json(db / "split.json", split_database(load_database(db), SplitConfig(n_clients=2)))
    return db / "split.json"


def site(db, cid=0, **keys):
    """A deployed hospital site (default policy but `keys`; ledger initialised)."""
    return hospital_node(db, split_of(db), cid, **SEEDED, **keys)


def run_config(db, args, out=None):
    argv = ["--database_root", str(db), "--split_file", str(split_of(db)), *SMALL, *args]
    return {"main-args": " ".join([*argv, "--results_dir", str(out or db.parent / "results")])}


def send(db, args, kind, node, content=None, run_id=1, state=None, group="adversary"):
    """One message of type `kind` to a site with a fresh Context (a restarted SuperNode)."""
    context = Context(run_id, 1000, node, state or RecordDict(), run_config(db, args))
    msg = Message(content or RecordDict(), 1000, kind, group_id=group)
    return client_app.app(msg, context), context


def rule_of(reply) -> str | None:
    records = reply.content.config_records
    return str(records["refusal"]["rule"]) if "refusal" in records else None


def train_round(db, args, node, rnd, run_id=1, state=None):
    """Round `rnd` of `args` from the run's initial weights."""
    settings = run_settings(run_config(db, args))
    cfg = settings.configs.generative
    weights = cfg and initial_global_weights(settings.method.name, 16, 4, cfg, settings.seed)
    content = RecordDict({"weights": weights_record(weights or {})})
    content["config"] = ConfigRecord({"round": rnd})
    return send(db, args, "train", node, content, run_id, state)


def ledger_runs(node) -> dict:
    ledger = Ledger(node["ledger-dir"], node["dataset-id"], int(node["client-id"]))
    return ledger.read()["runs"]


# --- finding 1: a run ID reused with another run config ------------------------------------


def test_adversarial_a_run_id_reused_with_another_config_is_refused(gauss_db, task_identity):
    """Fresh Contexts (a restarted SuperNode) with run ID 1 and a run config of 2, then 6
    rounds: the second config is refused at its first message, and the ledger charged the
    run once, at the first config's epsilon."""
    node = site(gauss_db, **{"max-epsilon": 1})
    two = [*PRIVATE, "--n_fedavg_rounds", "2"]
    train_round(gauss_db, two, node, 0)
    six = [*PRIVATE, "--n_fedavg_rounds", "6"]
    reply, _ = send(gauss_db, six, "query", node)
    assert "claimed before with another run config" in rule_of(reply)
    with pytest.raises(Refusal, match="claimed before with another run config"):
        train_round(gauss_db, six, node, 1)
    runs = ledger_runs(node)
    assert list(runs) == ["1"] and runs["1"]["epsilon"] == 1.0


def test_adversarial_the_same_config_after_a_restart_draws_the_same_noise(gauss_db, task_identity):
    """A restarted SuperNode (fresh Context, secure noise) rebuilds the run's key from its own
    key, dataset, run ID and binding: round 2 after a restart is charged nothing more, and
    the noisy record count it sends is the one it sent before (one release, not one per
    restart)."""
    node = {**site(gauss_db), "noise-source": "secure"}
    args = [*PRIVATE, "--n_fedavg_rounds", "3"]
    first, _ = train_round(gauss_db, args, node, 0)
    second, _ = train_round(gauss_db, args, node, 1)  # restarted: a fresh Context
    weight = [int(r.content.metric_records["client"]["n_samples"]) for r in (first, second)]
    assert weight[0] == weight[1]
    assert spent(Ledger(node["ledger-dir"], node["dataset-id"], 0).read())[0] == 1.0


# --- finding 2: the default policy has a finite epsilon -----------------------------------


def test_adversarial_the_default_site_refuses_a_large_epsilon(gauss_db, task_identity):
    """--epsilon 50 with a tiny delta is refused by a site that sets nothing; and a budget
    holds several runs but not without limit."""
    assert math.isfinite(SitePolicy().max_epsilon)
    reply, _ = send(
        gauss_db, [*PRIVATE, "--epsilon", "50", "--delta", "1e-9"], "query", site(gauss_db)
    )
    assert rule_of(reply) == "--epsilon 50 exceeds max-epsilon 10"


def test_adversarial_runs_stop_at_the_lifetime_budget(gauss_db, task_identity):
    """Runs at epsilon 4 on a default site (budget 10): two are accepted, the third refused."""
    node = site(gauss_db)
    args = [*PRIVATE, "--epsilon", "4"]
    for run_id in (1, 2):
        train_round(gauss_db, args, node, 0, run_id=run_id)
    reply, _ = send(gauss_db, args, "query", node, run_id=3)
    assert "epsilon 12 in all would exceed the dataset's budget 10" in rule_of(reply)


def test_adversarial_the_delta_budget_holds_several_runs(gauss_db, task_identity):
    """The default delta budget is several runs at the default max-delta (the first DP run does
    not spend it all)."""
    assert DEFAULT_BUDGET_DELTA >= 5 * DEFAULT_MAX_DELTA
    node = site(gauss_db)
    args = [*DPCVAE, "--delta", str(DEFAULT_MAX_DELTA)]
    for run_id in (1, 2, 3):
        assert rule_of(send(gauss_db, args, "query", node, run_id=run_id)[0]) is None
        train_round(gauss_db, args, node, 0, run_id=run_id)


# --- finding 3: a free query reveals nothing of n ------------------------------------------


def test_adversarial_a_delta_search_answers_the_same_for_any_record_count(tmp_path, task_identity):
    """The same binary search over --delta against a site of 600 records and one of 60: every
    answer is the same (no rule reads the record count), so the search learns nothing of n."""
    answers = []
    for n in (600, 60):
        db = make_gaussian_db(tmp_path / f"db{n}", n_per_file=(n,))
        node = site(db, **{"max-delta": 0.9})
        row = []
        for delta in np.geomspace(1e-6, 0.5, 12):
            reply, _ = send(db, [*DPCVAE, "--delta", f"{delta:.3g}"], "query", node)
            row.append(rule_of(reply))
        answers.append(row)
    assert answers[0] == answers[1]


# --- findings 4 and 5: crafted models, errors on the data path ------------------------------


def crafted_pft_model(dim, n_classes, only):
    """Pooled DP-FedPFT statistics that can sample class `only` alone (the others count 0)."""
    counts = torch.zeros(n_classes)
    counts[only] = 100.0
    return {
        "counts": counts,
        "sums": torch.zeros(n_classes, dim),
        "second": torch.ones(n_classes, dim) * 100.0,
    }


def test_adversarial_a_one_class_model_gets_no_metric_from_a_default_site(gauss_db, task_identity):
    """After its one DP-FedPFT release, a default site answers the end-of-run step with its
    privacy line only (whatever model is sent, so a one-class model learns no class share),
    and refuses the test report."""
    args = ["--method", "dpfedpft", "--local_epochs", "20", "--delta", "1e-5"]
    node = site(gauss_db)
    _, context = send(
        gauss_db,
        args,
        "train",
        node,
        RecordDict(
            {
                "weights": weights_record({}),
                "config": ConfigRecord({"round": 0}),
            }
        ),
    )
    replies = []
    for only in (0, 1):
        state = RecordDict(dict(context.state.items()))
        model = weights_record(crafted_pft_model(16, 4, only))
        content = RecordDict({"weights": model})
        if only:
            with pytest.raises(Refusal, match="already released"):
                send(gauss_db, args, "evaluate.synthesize", node, content, state=state)
            continue
        reply, _ = send(gauss_db, args, "evaluate.synthesize", node, content, state=state)
        replies.append(reply)
    (reply,) = replies
    assert set(reply.content.metric_records) == {"client"}
    assert "withheld" in reply.content.config_records
    privacy = json.loads(str(reply.content.config_records["privacy"]["json"]))
    assert privacy["epsilon"] <= 1.0
    with pytest.raises(Refusal, match="test metrics are not released"):
        send(gauss_db, args, "evaluate", node, RecordDict(), state=state)


def test_adversarial_an_error_on_the_data_path_is_one_uniform_refusal(
    gauss_db, task_identity, monkeypatch
):
    """An error while the site computes (here a data-dependent IndexError in the end-of-run
    step of a site that releases metrics) comes back as one refusal whose text holds neither
    the error nor a path: two different errors read the same."""
    args = ["--method", "dpfedpft", "--local_epochs", "20", "--delta", "1e-5"]
    node = site(gauss_db, **{"release-metrics": "true"})
    config = ConfigRecord({"round": 0})
    texts = []
    for run_id, error in ((1, IndexError("class 3 has 0 samples")), (2, ValueError("n=149"))):

        def broken(*a, error=error, **k):
            raise error

        monkeypatch.setattr(client_app, "finish_client", broken)
        _, context = send(
            gauss_db,
            args,
            "train",
            node,
            RecordDict({"weights": weights_record({}), "config": config}),
            run_id=run_id,
        )
        model = RecordDict({"weights": weights_record(crafted_pft_model(16, 4, run_id))})
        with pytest.raises(Refusal) as err:
            send(gauss_db, args, "evaluate.synthesize", node, model, run_id, context.state)
        texts.append(str(err.value))
    expected = "client 0's site could not answer evaluate.synthesize (the reason is in its log)"
    assert texts == [expected, expected]
    assert str(gauss_db) not in texts[0] and "149" not in texts[0]


# --- finding 6: calibration, deleted ledger, group ids, ledger paths ------------------------


def test_adversarial_the_papers_calibration_is_refused(gauss_db, task_identity):
    """--dp_calibration paper spends more than its target: refused by any site."""
    reply, _ = send(gauss_db, [*PRIVATE, "--dp_calibration", "paper"], "query", site(gauss_db))
    assert "--dp_calibration paper spends more than --epsilon" in rule_of(reply)
    permissive = site(gauss_db, **PERMISSIVE)
    reply, _ = send(gauss_db, [*PRIVATE, "--dp_calibration", "paper"], "query", permissive)
    assert "spends more than" in rule_of(reply)


def test_adversarial_a_deleted_ledger_fails_closed(gauss_db, task_identity):
    """Deleting the ledger file does not give a fresh budget: the site refuses until the
    operator initialises it again."""
    node = site(gauss_db)
    train_round(gauss_db, PRIVATE, node, 0)
    Ledger(node["ledger-dir"], node["dataset-id"], 0).path.unlink()
    reply, _ = send(gauss_db, PRIVATE, "query", node)
    assert "privacy ledger is not initialised" in rule_of(reply)
    with pytest.raises(Refusal, match="not initialised"):
        train_round(gauss_db, PRIVATE, node, 0)


def test_adversarial_validation_is_answered_once_per_round_whatever_the_group_id(
    gauss_db, tmp_path, task_identity
):
    """A FedAvg site that releases metrics answers at most one validation per round: more
    validate messages with new group ids after the run are refused."""
    keys = {**PERMISSIVE, "release-metrics": "true"}
    nodes = [site(gauss_db, 1, **keys), site(gauss_db, 0, **keys)]
    for i in (0, 1):  # sharing without DP spends an unbounded epsilon: a budget without limit
        Ledger(nodes[0]["ledger-dir"], f"hospital{i}", i).set_budget(math.inf, 1.0)
    config = run_config(gauss_db, FEDAVG, tmp_path / "r")
    grid = InProcessGrid(nodes, config)
    server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    node_id, context = next(iter(grid.contexts.items()))
    validate = next(m for m in grid.sent if m.metadata.message_type == "evaluate.validate")
    for group in ("round 9", "again"):
        msg = Message(validate.content, node_id, "evaluate.validate", group_id=group)
        with pytest.raises(Refusal, match="validation is answered once per round"):
            client_app.app(msg, context)


def test_adversarial_a_deployed_site_names_its_own_paths_and_dataset(gauss_db, task_identity):
    """A deployed site without its own database-root, ledger-dir or dataset-id is refused at
    start, naming the keys: the coordinator's --database_root never chooses the site's data
    or ledger."""
    node = site(gauss_db)
    for key in ("database-root", "ledger-dir", "dataset-id"):
        bad = {k: v for k, v in node.items() if k != key}
        with pytest.raises(PolicyError, match=f"must set {key}"):
            send(gauss_db, PRIVATE, "query", bad)


def test_adversarial_refusals_carry_no_site_path(gauss_db, task_identity):
    node = site(gauss_db)
    for args in ([*PRIVATE, "--epsilon", "40"], PRIVATE):
        Ledger(node["ledger-dir"], node["dataset-id"], 0).set_budget(0.5, 1e-3)
        rule = rule_of(send(gauss_db, args, "query", node)[0])
        assert rule and node["ledger-dir"] not in rule and str(gauss_db) not in rule


# --- finding 7: a DP method that its registry entry calls private --------------------------


def toy_dp_method(monkeypatch, client):
    """Register a DP linear head the way docs/architecture.md says (one registry entry with
    flower=True, private=True, the dp section), whose client is `client`."""
    fedavg = registry.get("fedavg")
    toy = dataclasses.replace(
        fedavg,
        name="dphead",
        sections=("fedavg", "dp"),
        aliases=(),
        private=True,
        client=client,
    )
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, toy))
    monkeypatch.setattr(registry, "NAMES", (*registry.NAMES, "dphead"))
    return toy


def test_adversarial_a_private_method_whose_client_keeps_no_accounting_is_refused(
    gauss_db, tmp_path, task_identity, monkeypatch
):
    """The toy DP head whose client is plain FedAvg, on a strict site (max-epsilon 1, no
    no-DP): refused at the start, before any round (it would train without DP)."""
    toy_dp_method(monkeypatch, FedAvgClient)
    args = ["--method", "dphead", "--n_rounds", "2", "--delta", "1e-5"]
    strict = site(gauss_db, **{"max-epsilon": 1, "methods": "dphead", "release-metrics": "true"})
    assert site_policy(strict).methods == ("dphead",)
    reply, _ = send(gauss_db, args, "query", strict)
    assert "says it is private, but its client keeps no privacy accounting" in rule_of(reply)
    config = run_config(gauss_db, args, tmp_path / "r")
    grid = InProcessGrid([strict, site(gauss_db, 1, **{"max-epsilon": 1})], config)
    with pytest.raises(Refusal, match="no privacy accounting"):
        server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    assert {m.metadata.message_type for m in grid.sent} == {"query"}
    with pytest.raises(Refusal, match="no privacy accounting"):
        train_round(gauss_db, args, strict, 0)


# --- findings 8 and 9: node config keys, budget in the ledger, a refused run ---------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [("max_epsilon", "max-epsilon"), ("databse-root", "database-root"), ("budget-epsilon", None)],
)
def test_adversarial_a_misspelled_node_config_key_is_refused(gauss_db, task_identity, key, hint):
    """`max_epsilon = 1` (underscore) does not leave max-epsilon at its default without a
    word; a misspelled database-root does not fall back to the coordinator's; the old budget
    keys are refused with what replaced them."""
    node = {**site(gauss_db), key: "1"}
    with pytest.raises(PolicyError, match=key) as err:
        site_policy(node)
    if hint:
        assert f"did you mean {hint}" in str(err.value)
    else:
        assert "python -m fl.ledger budget" in str(err.value)
    with pytest.raises(PolicyError, match=key):
        send(gauss_db, PRIVATE, "query", node)


def test_adversarial_the_budget_lives_in_the_ledger(gauss_db, task_identity, tmp_path):
    """A restart with another node config cannot change the budget; only the logged `budget`
    command does."""
    node = site(gauss_db)
    ledger = Ledger(node["ledger-dir"], node["dataset-id"], 0)
    ledger.set_budget(2.0, 1e-3)
    for restart in (node, {**node, "max-epsilon": 5}):
        send(gauss_db, PRIVATE, "query", restart)
        assert ledger.budget() == (2.0, 1e-3)
    book = ledger.read()
    assert [e["what"].split(":")[0] for e in book["log"]] == ["init", "budget"]


def test_adversarial_a_run_one_site_refuses_charges_no_other_site(
    gauss_db, tmp_path, task_identity
):
    """Two sites, one whose budget is spent: the run stops at the start (the coordinator asks
    every site first), the other site's ledger holds no charge, no run directory is left."""
    nodes = [site(gauss_db, 1), site(gauss_db, 0)]
    Ledger(nodes[0]["ledger-dir"], "hospital1", 1).set_budget(0.5, 1e-3)
    config = run_config(gauss_db, PRIVATE, tmp_path / "r")
    grid = InProcessGrid(nodes, config)
    with pytest.raises(Refusal, match="client 1: epsilon 1 in all would exceed"):
        server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    assert {m.metadata.message_type for m in grid.sent} == {"query"}
    assert ledger_runs(nodes[1]) == {} and ledger_runs(nodes[0]) == {}
    assert not (tmp_path / "r").exists()


# --- finding 10: the recommended private methods run on a default site -------------------


@pytest.mark.parametrize("method", ["dpfedpft", "preset-dp"])
def test_adversarial_the_recommended_private_methods_run_on_a_default_site(
    gauss_db, tmp_path, task_identity, method
):
    """DP-FedPFT and --preset dp (its default delta) run end to end on two default sites: the
    run reports each site's spent epsilon and keeps the sites' metrics."""
    if method == "dpfedpft":
        args = ["--method", "dpfedpft", "--local_epochs", "20"]
    else:
        assert float(preset_flags("dp").get("delta", 1e-4)) <= SitePolicy().max_delta
        args = ["--method", "dpcvae", "--preset", "dp", "--n_fedavg_rounds", "2"]
        args += ["--local_epochs", "20"]
    nodes = [site(gauss_db, 1), site(gauss_db, 0)]
    config = run_config(gauss_db, args, tmp_path / "r")
    server_app.app(InProcessGrid(nodes, config), Context(1, 0, {}, RecordDict(), config))
    metrics = read_metrics(tmp_path / "r")
    assert metrics["clients"] == [] and "release-metrics=false" in metrics["withheld"]
    epsilons = [c["epsilon"] for c in metrics["privacy"]["clients"]]
    assert len(epsilons) == 2 and all(0 < e <= 1.0 + 1e-9 for e in epsilons)
    for node in nodes:
        (run,) = ledger_runs(node).values()
        assert run["epsilon"] == 1.0


def test_node_keys_table_is_the_docs_table():
    """docs/privacy.md's node-config table is the code's (NODE_KEYS), line by line."""
    text = (REPO / "docs" / "privacy.md").read_text()
    assert node_keys_table() in text
    assert len(NODE_KEYS) >= 14


def test_the_not_covered_list_of_the_docs_is_the_codes():
    """docs/privacy.md's list of what is not covered is the one the runs write (NOT_COVERED and
    the rest), line by line."""
    text = (REPO / "docs" / "privacy.md").read_text()
    block = text.split("<!-- not covered -->\n")[1].split("\n<!-- end of not covered -->")[0]
    assert block == not_covered_markdown()
    assert all(item[:40] in " ".join(block.split()) for item in NOT_COVERED)
