"""Secure rounds under Flower (--secure_aggregation): SecAgg+ carries the sites' residues and the
coordinator gets exactly the simulation's modular sum; a site refuses a coordinator that runs
the protocol so as to learn more than the sum (the adversarial tests)."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from helpers.flower import DPCVAE, HEAD, SEEDED, SMALL, InProcessGrid, assert_same_results

import main as main_module
from algorithms.privacy.secure_aggregation import sum_shares
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app, server_app
from fl.records import SECURE_ACTION, SECURE_TRAIN
from fl.secure_rounds import modulus, secure_sum, threshold
from fl.secure_site import checked_secaggplus
from utils.io import write_json

SECURE = ["--secure_aggregation", "--min_honest_sites", "2"]


class Plan:
    """The parts of a SecurePlan that the transport reads."""

    def __init__(self, min_honest, bits=30):
        self.min_honest, self.bits = min_honest, bits


def residue_app(residues, min_honest):
    """A ClientApp whose secure action sends the node's given residues (as a site's does)."""
    app = ClientApp()

    @app.train(SECURE_ACTION, mods=[checked_secaggplus(lambda context: min_honest)])
    def train(msg, context):
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
            msg = copy.deepcopy(msg)
            if self.tamper is not None:
                self.tamper(msg)
            self.sent.append(msg)
            try:
                replies.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
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
