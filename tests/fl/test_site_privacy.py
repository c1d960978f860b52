"""What a Flower site guarantees by itself: noise that the run seed does not reproduce, its own
policy (refusals at the start and at every message), its calibrated rounds, one end of run, its
fidelity statistics kept if it says so, and its own split file with none at the coordinator."""

import json
import shlex

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from helpers.databases import make_gaussian_db
from helpers.flower import (
    DPCVAE,
    FEDAVG,
    SEEDED,
    SMALL,
    InProcessGrid,
    hospital_node,
    run_in_process,
)

import data.site_split as site_split_cli
from algorithms.methods.generative import make_clients
from data.database import load_database
from data.partition import load_split
from data.site_split import site_split
from data.split_config import SplitError
from fl import client_app, server_app
from fl.policy import PERMISSIVE, PolicyError, Refusal, SitePolicy, site_policy
from fl.records import record_weights
from fl.settings import load_client, run_settings
from utils.results import read_metrics


def sent(grid, kind):
    return [m for m in grid.sent if m.metadata.message_type == kind]


def released(reply):
    return record_weights(reply.content.array_records["weights"])


def differ(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_sites_with_one_run_config_add_noise_that_the_seed_does_not_reproduce(
    gauss_db, tmp_path, task_identity
):
    """Two sites (or two runs) given the same round of the same run release different decoders
    under secure noise; a coordinator that knows the seed and even the data reproduces a
    seeded site's decoder exactly, and a secure site's not at all."""
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    train = sent(grid, "train")[0]
    run_config = grid.contexts[train.metadata.dst_node_id].run_config
    cid = grid.contexts[train.metadata.dst_node_id].node_config["partition-id"]

    runs = iter(range(2, 100))  # each release a run of its own (the site's ledger keys by run)

    def site_release(node):
        context = Context(next(runs), 7, node, RecordDict(), run_config)
        return released(client_app.app(train, context))

    secure = [site_release({"partition-id": cid}) for _ in range(2)]
    seeded = [site_release({"partition-id": cid, **SEEDED}) for _ in range(2)]
    assert differ(secure[0], secure[1])
    assert not differ(seeded[0], seeded[1])

    s = run_settings(run_config)
    data, n_classes, _ = load_client(str(gauss_db), str(gauss_db / "split.json"), cid)
    gen, dp = s.configs.generative, s.configs.dp
    coordinator = make_clients(
        method="dpcvae", clients=[data], n_classes=n_classes, cfg=gen, dp=dp, seed=s.seed
    )[0]
    guess = coordinator.fit(record_weights(train.content.array_records["weights"]), 0).weights
    assert not differ(guess, seeded[0])
    assert differ(guess, secure[0]) and differ(guess, secure[1])


@pytest.mark.parametrize(
    ("policy", "args", "rule"),
    [
        ({"max-epsilon": 0.5}, DPCVAE, "client 0: --epsilon 1 exceeds max-epsilon 0.5"),
        ({"max-delta": 1e-5}, DPCVAE, "client 0: --delta 0.0001 exceeds max-delta 1e-05"),
        ({"allow-no-dp": "false"}, [*DPCVAE, "--disable_dp"], "client 0: --dp off: sharing"),
        ({"allow-no-dp": False}, FEDAVG, r"client 0: --method fedavg \(not private\)"),
        ({"methods": "dpcvae,dpcgan"}, FEDAVG, "client 0: --method fedavg is not served"),
        (
            {"max-epsilon": 4},
            [*DPCVAE, "--dp_calibration", "paper"],
            "client 0: --dp_calibration paper spends more",
        ),
    ],
    ids=["epsilon", "delta", "disable-dp", "not-private", "method", "paper-calibration"],
)
def test_a_run_that_breaks_a_sites_policy_is_refused_at_the_start(
    gauss_db, tmp_path, task_identity, policy, args, rule
):
    nodes = [{"partition-id": 1, **SEEDED}, {"partition-id": 0, **SEEDED, **policy}]
    with pytest.raises(Refusal, match=f"refused by its sites' policies: {rule}"):
        run_in_process(gauss_db, tmp_path / "r", args, nodes)
    assert not (tmp_path / "r").exists()  # stopped before the run directory was opened


def test_a_site_refuses_every_message_of_a_run_that_breaks_its_policy(
    gauss_db, tmp_path, task_identity
):
    """A coordinator that skips the first message gains nothing: training is refused too."""
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    train = sent(grid, "train")[0]
    node = grid.contexts[train.metadata.dst_node_id]
    strict = {**node.node_config, "max-epsilon": 0.5}
    context = Context(1, 7, strict, RecordDict(), node.run_config)
    with pytest.raises(Refusal, match="--epsilon 1 exceeds max-epsilon 0.5"):
        client_app.app(train, context)
    assert "client.arrays" not in context.state  # nothing trained


def test_a_site_trains_only_its_calibrated_rounds_and_ends_the_run_once(
    gauss_db, tmp_path, task_identity
):
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    last = sent(grid, "train")[-1]
    node = last.metadata.dst_node_id
    context = grid.contexts[node]
    content = RecordDict(
        {"weights": last.content.array_records["weights"], "config": ConfigRecord({"round": 2})}
    )
    beyond = Message(content, node, "train", group_id="round 3")
    with pytest.raises(Refusal, match="round 3 is beyond the 2 rounds its noise is calibrated"):
        client_app.app(beyond, context)
    for kind in ("evaluate.synthesize", "evaluate"):
        again = next(m for m in sent(grid, kind) if m.metadata.dst_node_id == node)
        with pytest.raises(Refusal, match=f"{kind} was already answered in this run"):
            client_app.app(again, context)
    # a site that has not trained every round evaluates nothing
    fresh = Context(1, node, context.node_config, RecordDict(), context.run_config)
    with pytest.raises(Refusal, match="comes after round 2, its last"):
        client_app.app(sent(grid, "evaluate.synthesize")[0], fresh)
    with pytest.raises(Refusal, match="test metrics asked before the end-of-run evaluation"):
        client_app.app(sent(grid, "evaluate")[0], fresh)


def test_a_site_keeps_its_fidelity_statistics_and_reports_its_noise_source(
    gauss_db, tmp_path, task_identity
):
    nodes = [{"partition-id": 1}, {"partition-id": 0, **SEEDED, "release-fidelity": "false"}]
    run_in_process(gauss_db, tmp_path / "r", DPCVAE, nodes)
    metrics = read_metrics(tmp_path / "r")
    fidelity = metrics["fidelity"]
    assert fidelity["wasserstein"][0] is None and fidelity["precision"][0] is None
    assert fidelity["wasserstein"][1] > 0
    assert fidelity["wasserstein_mean"] == fidelity["wasserstein"][1]
    privacy = metrics["privacy"]
    assert [c["noise_source"] for c in privacy["clients"]] == ["seeded", "secure"]
    assert privacy["noise_source"] == "mixed" and "run seed" in privacy["noise_caveat"]
    for c in privacy["clients"]:
        assert c["accountant_history"][0] == [20.0, 1.0, 1]  # the noisy count's release
        assert c["epsilon"] <= privacy["target_epsilon"]


def test_policy_keys_are_checked_and_named():
    assert site_policy({}) == SitePolicy()
    policy = site_policy({"max-epsilon": "2", "allow-no-dp": "false", "methods": "dpcvae"})
    assert policy.max_epsilon == 2.0 and not policy.allow_no_dp and policy.methods == ("dpcvae",)
    for bad, key in [
        ({"max-epsilon": "x"}, "max-epsilon"),
        ({"max-delta": 0}, "max-delta"),
        ({"allow-no-dp": "maybe"}, "allow-no-dp"),
        ({"methods": "local"}, "methods"),
        ({"noise-source": "os"}, "noise-source"),
    ]:
        with pytest.raises(PolicyError, match=f"node config: {key}"):
            site_policy(bad)


def test_site_split_holds_every_record_of_the_site_once_stratified(tmp_path, capsys):
    db_root = make_gaussian_db(tmp_path / "db", n_per_file=(200,), seed=3)
    out = tmp_path / "mine.json"
    argv = ["--database_root", str(db_root), "--client_id", "4", "--output", str(out)]
    assert site_split_cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    db = load_database(db_root)
    split = load_split(out, db)  # the same checks as any split file
    (client,) = split["clients"]
    assert client["id"] == 4 and split["args"]["split_method"] == "site"
    rows = sorted(client["train"] + client["val"] + client["test"])
    assert rows == list(range(200))
    _, labels, _ = db.pooled()
    counts = split["class_counts"][0]
    for part in ("train", "val", "test"):
        assert counts[part] == np.bincount(labels[client[part]], minlength=4).tolist()
    test_share = np.array(counts["test"]) / np.bincount(labels, minlength=4)
    assert np.all(np.abs(test_share - 0.2) < 0.05)
    with pytest.raises(SplitError, match="--val_frac"):
        site_split(db, 0, val_frac=1.0)
    assert site_split_cli.main([*argv[:4], "--output", str(tmp_path), "--seed", "1"]) == 2


def test_sites_with_their_own_databases_and_splits_need_no_split_at_the_coordinator(
    tmp_path, task_identity
):
    """The coordinator's main-args name no split file and a database that does not exist: the
    ServerApp opens neither; each site reads its own database and split file."""
    dbs = [make_gaussian_db(tmp_path / f"site{i}", n_per_file=(300,), seed=i) for i in range(2)]
    for i, db in enumerate(dbs):
        argv = ["--database_root", str(db), "--client_id", str(i), "--output", str(db / "s.json")]
        assert site_split_cli.main(argv) == 0
    out = tmp_path / "r"
    argv = ["--database_root", str(tmp_path / "nowhere"), *SMALL, *DPCVAE]
    run_config = {"main-args": shlex.join([*argv, "--results_dir", str(out)])}
    nodes = [
        hospital_node(db, db / "s.json", i, **SEEDED, **PERMISSIVE) for i, db in enumerate(dbs)
    ]
    server_app.app(InProcessGrid(nodes, run_config), Context(1, 0, {}, RecordDict(), run_config))
    config = json.loads((out / "config.json").read_text())
    assert config["split_file"] == [str(db / "s.json") for db in dbs]
    fingerprints = config["database"]["fingerprint"]
    assert len(fingerprints) == 2 and fingerprints[0] != fingerprints[1]
    metrics = read_metrics(out)
    assert [s["client_id"] for s in metrics["split"]["sites"]] == [0, 1]
    # no site sends its split sizes, even under a permissive policy
    assert metrics["counts"] == "absent (deployment)"
    assert not any({"n_train", "n_val", "n_test"} & set(c) for c in metrics["clients"])
    assert not (tmp_path / "nowhere").exists()
