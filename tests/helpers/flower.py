"""The Flower apps in process: a grid that calls the ClientApp directly and the flags of a small
federated run (used by tests/fl/; a ServerApp process's task identity is the `task_identity`
fixture in tests/conftest.py)."""

import itertools

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app, server_app
from fl.ledger import DEFAULT_BUDGET_DELTA, DEFAULT_BUDGET_EPSILON, Ledger
from utils.io import write_json

RUN_IDS = itertools.count(100)  # in-process grids' run ids (fresh Contexts below use 1, 2)
SMALL = ["--n_clients", "2", "--quiet"]
SEEDED = {"noise-source": "seeded"}  # a site's testing switch: noise from the run seed
HEAD = ["--local_epochs", "20"]  # dpcvae, dpcgan (FedAvg trains no other head)
DPCVAE = ["--method", "dpcvae", *HEAD, "--n_fedavg_rounds", "2", "--local_epochs_gen", "1"]
FEDAVG = ["--method", "fedavg", "--n_rounds", "3", "--local_steps", "2"]


class InProcessGrid(Grid):
    """Flower's Grid, delivering each message to the ClientApp in this process (one Context per
    node, as a SuperNode keeps it) and answering failures as Flower does: an error reply."""

    def __init__(self, node_configs, run_config):
        run_id = next(RUN_IDS)  # a run of its own: a site's ledger (fl/ledger.py) keys by run
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, cfg, RecordDict(), run_config)
            for i, cfg in enumerate(node_configs)
        }
        self.sent: list[Message] = []

    def set_run(self, run):
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            try:
                replies.append(client_app.app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as err:
                replies.append(Message(Error(2, f"{type(err).__name__}: {err}"), reply_to=msg))
        return replies


def hospital_node(db, split, cid, **keys):
    """A deployed site's node config (client-id, its paths, its ledger and dataset-id) with the
    policy `keys` on top of the defaults; its ledger (`ledger-dir`, default next to the
    database) initialised with the default budget if it is not yet."""
    node = {
        "client-id": cid,
        "database-root": str(db),
        "split-file": str(split),
        "ledger-dir": str(db.parent / "site-ledger"),
        "dataset-id": f"hospital{cid}",
        **keys,
    }
    ledger = Ledger(node["ledger-dir"], node["dataset-id"], cid)
    ledger.initialise(DEFAULT_BUDGET_EPSILON, DEFAULT_BUDGET_DELTA, exist_ok=True)
    return node


def run_in_process(db, out, args, node_configs=None):
    if not (db / "split.json").exists():
        write_json(db / "split.json", split_database(load_database(db), SplitConfig(n_clients=2)))
    argv = ["--database_root", str(db), "--split_file", str(db / "split.json"), *SMALL, *args]
    run_config = {"main-args": " ".join([*argv, "--results_dir", str(out)])}
    nodes = node_configs or [{"partition-id": 1, **SEEDED}, {"partition-id": 0, **SEEDED}]
    grid = InProcessGrid(nodes, run_config)
    server_app.app(grid, Context(1, 0, {}, RecordDict(), run_config))
    return argv, grid
