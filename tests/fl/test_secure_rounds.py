"""Secure rounds under Flower (--secure_aggregation): SecAgg+ carries the sites' residues and the
coordinator gets exactly the simulation's modular sum; a site refuses a coordinator that runs
the protocol so as to learn more than the sum (the adversarial tests)."""

import copy
import os

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from helpers.flower import DPCVAE, HEAD, SEEDED, SMALL, InProcessGrid, assert_same_results

import main as main_module
from algorithms.privacy.secure_aggregation import sum_shares
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app, server_app
from fl.policy import Refusal
from fl.processes import descendants
from fl.records import SECURE_ACTION, SECURE_TRAIN
from fl.run_local import run_local
from fl.secure_rounds import modulus, secure_sum, threshold
from fl.secure_site import checked_secaggplus
from utils.io import write_json

SECURE = ["--secure_aggregation", "--min_honest_sites", "2"]


class Plan:
    """The parts of a SecurePlan that the transport reads."""

    def __init__(self, min_honest, bits=30):
        self.min_honest, self.bits = min_honest, bits


def residue_app(residues, min_honest, calls=None):
    """A ClientApp whose secure action sends the node's given residues (as a site's does);
    `calls` (a list) records the nodes whose release was computed."""
    app = ClientApp()

    @app.train(SECURE_ACTION, mods=[checked_secaggplus(lambda context: min_honest)])
    def train(msg, context):
        if calls is not None:
            calls.append(context.node_id)
        values = residues[context.node_id].astype(np.float64)
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([values]), 1, {"id": 7})
        return Message(compat.fitres_to_recorddict(res, True), reply_to=msg)

    return app


class CopyingGrid(InProcessGrid):
    """The in-process grid delivering to `app` a copy of each message, as the network does
    (SecAgg+'s workflow sends one setup record to every node, and the mod edits what it gets);
    `tamper(msg)`, if given, edits each message on its way (a dishonest coordinator)."""

    def __init__(self, node_configs, run_config, app=client_app.app, tamper=None):
        super().__init__(node_configs, run_config)
        self.app, self.tamper = app, tamper

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            if self.tamper is not None:
                self.tamper(msg)
            self.sent.append(msg)
            try:
                delivered = copy.deepcopy(msg)
                replies.append(self.app(delivered, self.contexts[msg.metadata.dst_node_id]))
            except Exception as err:
                replies.append(Message(Error(2, f"{type(err).__name__}: {err}"), reply_to=msg))
        return replies


@pytest.mark.parametrize("n_sites,min_honest", [(2, 2), (3, 2), (5, 3)])
def test_secaggplus_carries_the_exact_modular_sum_of_the_residues(
    task_identity, n_sites, min_honest
):
    """The residues through SecAgg+ (train.secure, weight 1, c = 2^30): the coordinator's sum
    is `sum_shares`'s, bit for bit, residues near 0 and 2^30 - 1 included."""
    rng = np.random.default_rng(n_sites)
    residues = {1000 + i: rng.integers(0, 2**30, size=257, dtype=np.int64) for i in range(n_sites)}
    residues[1000][:3] = [0, 2**30 - 1, 2**30 - 1]
    grid = CopyingGrid([{}] * n_sites, {}, residue_app(residues, min_honest))
    plan = Plan(min_honest)
    total, metrics = secure_sum(grid=grid, nodes=list(residues), weights={}, rnd=0, plan=plan)
    expected = sum_shares([torch.from_numpy(r) for r in residues.values()], plan)
    assert total.dtype == torch.int64 and torch.equal(total, expected)
    assert metrics == {node: {"id": 7} for node in residues}
    # every message went out as the sites' secure action, four stages per node
    assert [m.metadata.message_type for m in grid.sent] == [SECURE_TRAIN] * 4 * n_sites


def run_secure(db, out, args, tamper=None):
    """`run_in_process` (tests/helpers/flower.py) on a grid that copies each message."""
    if not (db / "split.json").exists():
        write_json(db / "split.json", split_database(load_database(db), SplitConfig(n_clients=2)))
    argv = ["--database_root", str(db), "--split_file", str(db / "split.json"), *SMALL, *args]
    run_config = {"main-args": " ".join([*argv, "--results_dir", str(out)])}
    nodes = [{"partition-id": 1, **SEEDED}, {"partition-id": 0, **SEEDED}]
    grid = CopyingGrid(nodes, run_config, tamper=tamper)
    server_app.app(grid, Context(1, 0, {}, RecordDict(), run_config))
    return argv, grid


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "dpfedpft", *HEAD],
        [*DPCVAE, "--preset", "dp", "--n_fedavg_rounds", "2"],
    ],
    ids=["dpfedpft", "dpcvae"],
)
def test_a_secure_run_under_flower_gives_main_py_results(gauss_db, tmp_path, task_identity, args):
    """The whole run with SecAgg+ carrying each round's sum: main.py's results files (the same
    residues, the same decoded sum, the same steps), and only train.secure messages train."""
    argv, grid = run_secure(gauss_db, tmp_path / "flower", [*args, *SECURE])
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "main")]) == 0
    assert_same_results(tmp_path / "main", tmp_path / "flower")
    kinds = {m.metadata.message_type for m in grid.sent}
    assert SECURE_TRAIN in kinds and "train" not in kinds


def test_the_protocol_parameters_keep_m_in_every_sum_and_out_of_a_coalitions_reach():
    assert [threshold(n, m) for n, m in [(2, 1), (2, 2), (5, 1), (5, 3), (5, 5), (10, 4)]] == [
        2,
        2,
        5,
        3,
        5,
        7,
    ]
    assert modulus(2, 30) == 2**33 and modulus(5, 30) == 2**35
    assert all(modulus(n, 30) > n * 2**31 for n in range(2, 40))


def stage_of(msg):
    return msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]


def counted_residue_app(min_honest, n_sites):
    """`residue_app` of `n_sites` nodes, its node ids, and the list of releases it computes."""
    residues = {1000 + i: np.full(8, i, dtype=np.int64) for i in range(n_sites)}
    calls = []
    return residue_app(residues, min_honest, calls), list(residues), calls


def test_adversarial_a_sum_of_fewer_than_m_sites_is_refused_at_setup(task_identity):
    """Sites whose plan needs m = 3 honest sites in every sum refuse a two-site SecAgg+ setup
    before their release is computed: the round halts, nothing reaches the collect stage."""
    app, nodes, calls = counted_residue_app(3, 2)
    grid = CopyingGrid([{}] * 2, {}, app)
    with pytest.raises(RuntimeError, match="a sum of 2 sites, fewer than the 3 honest"):
        secure_sum(grid=grid, nodes=nodes, weights={}, rnd=0, plan=Plan(2))
    assert calls == [] and {stage_of(m) for m in grid.sent} == {Stage.SETUP}


@pytest.mark.parametrize(
    "key,value,needle",
    [
        (Key.SAMPLE_NUMBER, 1, "a sum of 1 sites, fewer than the 2 honest"),
        (Key.THRESHOLD, 1, "reconstruction threshold 1"),
        (Key.SHARE_NUMBER, 3, "3 shares of each secret among 4 sites"),
    ],
)
def test_adversarial_a_setup_that_weakens_the_sum_is_refused(task_identity, key, value, needle):
    """A coordinator announcing fewer than m sites, a threshold that n - m colluding sites
    reach, or a sparse share graph (its setup edited on the way) is refused at setup."""
    app, nodes, calls = counted_residue_app(2, 4)

    def tamper(msg):
        if stage_of(msg) == Stage.SETUP:
            msg.content.config_records[RECORD_KEY_CONFIGS][key] = value

    grid = CopyingGrid([{}] * 4, {}, app, tamper)
    with pytest.raises(RuntimeError, match=needle):
        secure_sum(grid=grid, nodes=nodes, weights={}, rnd=0, plan=Plan(2))
    assert calls == []


@pytest.mark.parametrize("how", ["active-and-dead", "self-dead", "outsider", "too-few-active"])
def test_adversarial_an_unmask_request_that_would_expose_a_live_site_is_refused(task_identity, how):
    """At unmask a site gives the shares of the mask seeds of the sites it is told are active
    and of the secret keys of those it is told dropped out: both for one live site would
    unmask it. A site refuses lists that overlap, name itself dead, name a node outside its
    sum, or hold fewer than m active sites; the coordinator gets no share and no sum."""
    app, nodes, _ = counted_residue_app(3, 4)

    def tamper(msg):
        if stage_of(msg) != Stage.UNMASK:
            return
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        active, me = list(configs[Key.ACTIVE_NODE_ID_LIST]), msg.metadata.dst_node_id
        other = next(n for n in active if n != me)
        dead = {
            "active-and-dead": [other],
            "self-dead": [me],
            "outsider": [4242],
            "too-few-active": [n for n in active if n != me][:2],
        }[how]
        if how in ("self-dead", "too-few-active"):
            active = [n for n in active if n not in dead]
        configs[Key.ACTIVE_NODE_ID_LIST], configs[Key.DEAD_NODE_ID_LIST] = active, dead

    grid = CopyingGrid([{}] * 4, {}, app, tamper)
    needle = {
        "active-and-dead": "named both active and dead",
        "self-dead": "it is named dead",
        "outsider": r"nodes \[4242\] are not in its sum",
        "too-few-active": "2 active sites, fewer than the 3",
    }[how]
    with pytest.raises(RuntimeError, match=needle):
        secure_sum(grid=grid, nodes=nodes, weights={}, rnd=0, plan=Plan(3))
    unmask_replies = [m for m in grid.sent if stage_of(m) == Stage.UNMASK]
    assert len(unmask_replies) == 4  # every site was asked, and every one refused (no sum)


def secure_sites(db, args):
    """Two simulated sites of a secure run on a grid that copies each message."""
    write_json(db / "split.json", split_database(load_database(db), SplitConfig(n_clients=2)))
    argv = ["--database_root", str(db), "--split_file", str(db / "split.json"), *SMALL, *args]
    run_config = {"main-args": " ".join([*argv, "--results_dir", str(db / "r")])}
    nodes = [{"partition-id": 0, **SEEDED}, {"partition-id": 1, **SEEDED}]
    return CopyingGrid(nodes, run_config)


def test_adversarial_a_replayed_secure_round_is_refused(gauss_db, task_identity):
    """A site releases each step once: the same secure round run again (a coordinator that
    would average two sums' noise away) is refused at the collect stage, before the release
    is computed again; the first one's sum came through."""
    grid = secure_sites(gauss_db, ["--method", "dpfedpft", *HEAD, *SECURE])
    nodes = list(grid.contexts)
    total, metrics = secure_sum(grid=grid, nodes=nodes, weights={}, rnd=0, plan=Plan(2))
    assert total.shape[0] > 0 and sorted(m["id"] for m in metrics.values()) == [0, 1]
    with pytest.raises(RuntimeError, match="asked for round 1 after round 1"):
        secure_sum(grid=grid, nodes=nodes, weights={}, rnd=0, plan=Plan(2))


def test_adversarial_a_plain_train_message_in_a_secure_run_is_refused(gauss_db, task_identity):
    """A site of a secure run answers its rounds through SecAgg+ only: a plain train message
    would have its residues (its share of the noise alone) sent in the clear."""
    grid = secure_sites(gauss_db, ["--method", "dpfedpft", *HEAD, *SECURE])
    content = RecordDict({"weights": ArrayRecord(), "config": ConfigRecord({"round": 0})})
    msg = Message(content, 1000, "train", group_id="round 1")
    with pytest.raises(Refusal, match=r"go through secure aggregation \(train.secure\) only"):
        client_app.app(msg, grid.contexts[1000])
    assert "last-round" not in grid.contexts[1000].state


def test_adversarial_a_real_site_refuses_a_setup_below_its_plans_m(gauss_db, task_identity):
    """The site of a run with --min_honest_sites 2 refuses a setup announcing one site, and
    nothing is computed or claimed from its data (no round trained)."""

    def tamper(msg):
        if stage_of(msg) == Stage.SETUP:
            msg.content.config_records[RECORD_KEY_CONFIGS][Key.SAMPLE_NUMBER] = 1

    grid = secure_sites(gauss_db, ["--method", "dpfedpft", *HEAD, *SECURE])
    grid.tamper = tamper
    with pytest.raises(RuntimeError, match="fewer than the 2 honest ones"):
        secure_sum(grid=grid, nodes=list(grid.contexts), weights={}, rnd=0, plan=Plan(2))
    assert all("last-round" not in c.state for c in grid.contexts.values())


@pytest.mark.slow
@pytest.mark.xdist_group("flower-engines")  # one at a time: each starts several processes
def test_a_secure_deployment_on_loopback_equals_main(gauss_db, tmp_path):
    """A SuperLink and two SuperNodes as separate processes (each message a fresh ClientApp
    process: SecAgg+'s state between stages lives in each node's Context.state), dpfedpft's
    release through SecAgg+ over gRPC: main.py's results files, and no process left behind
    (the deployment engine's test: the recipe's test runs its plain path, test_recipe.py)."""
    argv = ["--database_root", str(gauss_db), *SMALL, "--method", "dpfedpft", *HEAD, *SECURE]
    before = descendants([os.getpid()])
    run = run_local(
        main_argv=[*argv, "--results_dir", str(tmp_path / "flower")],
        engine="deployment",
        work_dir=tmp_path / "work",
        timeout=600,
        env={"OMP_NUM_THREADS": "1"},
        node_config=SEEDED,
    )
    assert run.status == "finished:completed"
    # the coordinator's run config names no split file: the sites' node configs do
    run_config = (tmp_path / "work" / "run_config.toml").read_text()
    assert "--split_file" not in run_config and "splits" not in run_config
    assert descendants([os.getpid()]) <= before
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "main")]) == 0
    assert_same_results(tmp_path / "main", tmp_path / "flower")
