"""A Flower site against a hostile coordinator (docs/privacy.md, "Threat model"): no exact
record count leaves it, the heads a coordinator sends are no oracle, its default policy is a
hospital's, and what it says of its data at `hello` is keyed with its own secret. The ClientApp
is called directly, as tests/fl/test_flower.py and tests/fl/test_site_privacy.py do."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from helpers.flower import DPCVAE, FEDAVG, SEEDED, SMALL, InProcessGrid, hospital_node

from algorithms.evaluation.heads import new_head
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from data.split_file import database_fingerprint
from fl import client_app, server_app
from fl import site as fl_site
from fl.policy import Refusal, SitePolicy, policy_violation
from fl.records import weights_record
from fl.settings import load_client, run_settings
from utils.collect import collect
from utils.io import sha256_file, write_json
from utils.results import read_metrics

COUNTS = {"n_train", "n_val", "n_test"}
PRIVATE = [*DPCVAE, "--delta", "1e-5"]  # within the default max-delta


def split_of(db):
    """The database's two-client split file (made once)."""
    if not (db / "split.json").exists():
        write_json(db / "split.json", split_database(load_database(db), SplitConfig(n_clients=2)))
    return db / "split.json"


def hospital(db, cid, **policy):
    """A SuperNode's node config that sets no policy key but `policy` (the defaults), with its
    ledger (`ledger-dir`, unless `policy` names another) initialised with the default budget."""
    return hospital_node(db, split_of(db), cid, **SEEDED, **policy)


def run_config(db, args, out=None):
    argv = ["--database_root", str(db), "--split_file", str(split_of(db)), *SMALL, *args]
    return {"main-args": " ".join([*argv, "--results_dir", str(out or db.parent / "results")])}


def ask(db, args, kind, node_config, content=None):
    """One message of type `kind` to a fresh site; its reply."""
    context = Context(1, 1000, node_config, RecordDict(), run_config(db, args))
    msg = Message(content or RecordDict(), 1000, kind, group_id="adversary")
    return client_app.app(msg, context)


def refusal(reply) -> str | None:
    records = reply.content.config_records
    return str(records["refusal"]["rule"]) if "refusal" in records else None


def crafted_head(dim, n_classes, favoured):
    """A head that predicts class `favoured` for every input: its accuracy is that class's share."""
    head = new_head(dim, n_classes, 0)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.state_dict()[next(k for k in head.state_dict() if k.endswith("bias"))][favoured] = 1
    return weights_record({k: v.detach() for k, v in head.state_dict().items()})


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every reply; `extra(msg)` adds records to what is sent."""

    def __init__(self, node_configs, run_config, extra=None):
        super().__init__(node_configs, run_config)
        self.replies: list[Message] = []
        self.extra = extra

    def send_and_receive(self, messages, *, timeout=None):
        if self.extra:
            for msg in messages:
                for name, record in self.extra(msg).items():
                    msg.content[name] = record
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies.extend(replies)
        return replies


def hospital_run(db, out, args, extra=None, **policy):
    """A run in process with two hospital sites (default policy but `policy`, a ledger of the
    run's own); the grid with the replies."""
    config = run_config(db, args, out)
    ledger = {"ledger-dir": str(out / "ledger"), **policy}
    grid = RecordingGrid([hospital(db, 1, **ledger), hospital(db, 0, **ledger)], config, extra)
    server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    return grid


def reply_keys(reply) -> set[str]:
    content = reply.content
    keys = set()
    for records in (content.metric_records, content.config_records):
        for name, record in records.items():
            keys |= {name, *record.keys()}
            for value in record.values():
                if isinstance(value, str) and value.startswith(("{", "[")):
                    keys |= set(json.loads(value)) if value.startswith("{") else set()
    return keys


def test_adversarial_no_site_reply_holds_a_record_count(gauss_db, tmp_path, task_identity):
    """Every reply of a whole DP-CVAE run on sites that release their metrics: no split size,
    no per-class count; the results say the counts are absent."""
    grid = hospital_run(gauss_db, tmp_path / "r", PRIVATE, **{"release-metrics": "true"})
    assert grid.replies and not any(r.has_error() for r in grid.replies)
    for reply in grid.replies:
        keys = reply_keys(reply)
        assert not keys & COUNTS, keys & COUNTS
        assert not any("per_class" in k or "class_count" in k for k in keys)
    metrics = read_metrics(tmp_path / "r")
    assert metrics["counts"] == "absent (deployment)"
    assert not any(COUNTS & set(c) for c in metrics["clients"])
    assert "n_test" not in metrics["fidelity"]["global_synthetic"]
    assert not {"test_acc_weighted", "test_f1_weighted_weighted"} & set(metrics["summary"])
    (row,) = collect([tmp_path / "r"])  # the tables read a deployment's results as they are
    assert row["clients"] == 2
    # (6) fidelity statistics on training embeddings are not released by default
    assert all(w is None for w in metrics["fidelity"]["wasserstein"])
    assert all(p is None for p in metrics["fidelity"]["precision"])


def test_adversarial_crafted_heads_get_nothing(gauss_db, tmp_path, task_identity):
    """A private run, default policy: a crafted head sent to `evaluate.validate` is refused, and
    one sent with `evaluate` changes nothing in the reply (the site trains its own global
    synthetic head); FedAvg's coordinator-head test metrics are refused too."""
    data, n_classes, _ = load_client(str(gauss_db), str(split_of(gauss_db)), 0)
    dim = data.x_train.shape[1]
    head = crafted_head(dim, n_classes, 0)
    with pytest.raises(Refusal, match="release-metrics=false"):
        ask(
            gauss_db,
            PRIVATE,
            "evaluate.validate",
            hospital(gauss_db, 0),
            RecordDict({"weights": head}),
        )
    # FedAvg: even a site that allows sharing without DP keeps the metrics of crafted heads
    fedavg_site = hospital(gauss_db, 0, **{"allow-no-dp": "true", "max-epsilon": "inf"})
    for kind in ("evaluate.validate", "evaluate"):
        with pytest.raises(Refusal, match="release-metrics=false"):
            ask(gauss_db, FEDAVG, kind, fedavg_site, RecordDict({"weights": head}))

    def with_head(favoured):
        def extra(msg):
            if msg.metadata.message_type == "evaluate":
                return {"weights": crafted_head(dim, n_classes, favoured)}
            return {}

        return extra

    answers = []
    released = {"release-metrics": "true"}
    for favoured in (0, 1):
        out = tmp_path / f"r{favoured}"
        grid = hospital_run(gauss_db, out, PRIVATE, with_head(favoured), **released)
        answers.append(
            [
                {k: dict(v) for k, v in r.content.metric_records.items()}
                for r in grid.replies
                if r.metadata.message_type == "evaluate"
            ]
        )
    assert answers[0] and answers[0] == answers[1]


def test_adversarial_a_large_delta_is_refused_by_a_fixed_rule(gauss_db, task_identity):
    """--delta 0.5 under max-epsilon=1 and the default max-delta is refused by the fixed
    max-delta; a site that sets a larger max-delta answers a query from its policy alone (no
    rule reads its record count, so a delta search learns nothing of n)."""
    config = hospital(gauss_db, 0, **{"max-epsilon": 1})
    rule = refusal(ask(gauss_db, [*DPCVAE, "--delta", "0.5"], "query", config))
    assert rule == "--delta 0.5 exceeds max-delta 0.0001"
    loose = hospital(gauss_db, 0, **{"max-epsilon": 1, "max-delta": 0.5})
    for delta in ("1e-3", "5e-4"):
        assert refusal(ask(gauss_db, [*DPCVAE, "--delta", delta], "query", loose)) is None


@pytest.mark.parametrize("args", [[*PRIVATE, "--disable_dp"], FEDAVG], ids=["no-dp", "fedavg"])
def test_adversarial_sharing_without_dp_is_refused_under_a_finite_max_epsilon(
    gauss_db, task_identity, args
):
    """allow-no-dp is true by default, but a finite max-epsilon forbids sharing without DP."""
    rule = refusal(ask(gauss_db, args, "query", hospital(gauss_db, 0, **{"max-epsilon": 1})))
    assert rule and "sharing without DP is forbidden by a finite max-epsilon" in rule


def test_adversarial_exact_counts_are_refused(gauss_db, task_identity):
    """--count_noise 0 (the record count sent in the clear) is below min-count-noise."""
    rule = refusal(ask(gauss_db, [*PRIVATE, "--count_noise", "0"], "query", hospital(gauss_db, 0)))
    assert rule == "--count_noise 0 is below min-count-noise 20"


def test_adversarial_default_policy_releases_no_fidelity_or_metrics():
    policy = SitePolicy()
    assert not policy.release_fidelity and not policy.release_metrics
    assert policy.max_delta == 1e-4 and policy.min_count_noise == 20
    assert math.isfinite(policy.max_epsilon) and not policy.allow_no_dp


def test_adversarial_dpfedpft_within_max_epsilon_is_accepted(gauss_db, tmp_path, task_identity):
    """DP-FedPFT's one release spends exactly its --epsilon: a finite max-epsilon serves it."""
    args = ["--method", "dpfedpft", "--local_epochs", "20", "--delta", "1e-5"]
    settings = run_settings(run_config(gauss_db, args))
    assert policy_violation(SitePolicy(max_epsilon=1.0), settings) is None
    grid = hospital_run(gauss_db, tmp_path / "r", [*args, "--epsilon", "1"])
    assert not any(refusal(r) for r in grid.replies if r.metadata.message_type == "query")
    assert read_metrics(tmp_path / "r")["privacy"]["clients"]


def test_adversarial_hello_fingerprint_is_keyed_and_stable(gauss_db, task_identity):
    """Not the unsalted SHA-256 of the labels (guessable), but stable for one site; another
    site secret gives another value."""

    def fingerprint(**extra):
        reply = ask(gauss_db, PRIVATE, "query", hospital(gauss_db, 0, **extra))
        return json.loads(str(reply.content.config_records["facts"]["fingerprint"]))

    db = load_database(gauss_db)
    _, labels, _ = db.pooled()
    unsalted = {
        database_fingerprint(db),
        hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest(),
    }
    first = fingerprint()
    assert first not in unsalted and len(first) == 64
    assert fingerprint() == first
    assert (gauss_db / fl_site.SITE_KEY_FILE).exists()
    assert fingerprint(**{"site-secret": "another"}) != first
    reply = ask(gauss_db, PRIVATE, "query", hospital(gauss_db, 0))
    split_sha = json.loads(str(reply.content.config_records["facts"]["split_sha256"]))
    assert split_sha != sha256_file(split_of(gauss_db))


def test_adversarial_a_site_refuses_an_unserved_report_config(gauss_db, task_identity):
    """An `evaluate` before the end-of-run evaluation of a private run is refused."""
    content = RecordDict({"config": ConfigRecord({"lambda-accuracy": 0.0})})
    site = hospital(gauss_db, 0, **{"release-metrics": "true"})
    with pytest.raises(Refusal, match="before the end-of-run evaluation"):
        ask(gauss_db, PRIVATE, "evaluate", site, content)


@pytest.mark.parametrize(
    ("policy", "rule"),
    [
        ({}, r"--method fedavg \(not private\): sharing without DP is forbidden by a finite"),
        (
            {"allow-no-dp": "true", "max-epsilon": "inf"},
            "heads the coordinator sends.*release-metrics=false",
        ),
    ],
    ids=["default", "allow-no-dp"],
)
def test_adversarial_fedavg_is_refused_before_any_count_or_head_metric_leaves(
    gauss_db, tmp_path, task_identity, policy, rule
):
    """FedAvg sends the exact record count as its weight and is evaluated with the
    coordinator's heads: a default site refuses it at the start, before any round."""
    config = run_config(gauss_db, FEDAVG, tmp_path / "r")
    grid = RecordingGrid([hospital(gauss_db, 1, **policy), hospital(gauss_db, 0, **policy)], config)
    with pytest.raises(Refusal, match=rule):
        server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    assert {m.metadata.message_type for m in grid.sent} == {"query"}


def test_adversarial_a_report_at_values_off_the_grid_is_refused(gauss_db, tmp_path, task_identity):
    """The test report answers only at values on each downstream mode's grid: a coordinator
    that asks for the test metrics at arbitrary lambdas or weights (one test query per value)
    is refused."""

    def off_grid(msg):
        if msg.metadata.message_type != "evaluate":
            return {}
        config = dict(msg.content.config_records["config"])
        config["joint-accuracy"] = 0.55
        return {"config": ConfigRecord(config)}

    released = {"release-metrics": "true"}
    with pytest.raises(RuntimeError, match="refuses: .*'joint-accuracy' on its grid"):
        hospital_run(gauss_db, tmp_path / "r", PRIVATE, off_grid, **released)
    assert not (tmp_path / "r" / "config.json").exists()  # a refused run leaves no file
