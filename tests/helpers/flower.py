"""The Flower apps in process: a grid that calls the ClientApp directly and the flags of a small
federated run (used by tests/fl/; a ServerApp process's task identity is the `task_identity`
fixture in tests/conftest.py)."""

import itertools
import json

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from algorithms.evaluation.downstream import POOLED
from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import client_app, server_app
from fl.ledger import DEFAULT_BUDGET_DELTA, DEFAULT_BUDGET_EPSILON, Ledger
from utils.io import read_csv, write_json
from utils.results import read_metrics

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


COUNTS = ("n_train", "n_val", "n_test")


def without_counts(main_metrics):
    """main.py's metrics.json as a Flower run writes it: no split sizes in its client rows (no
    site sends them), no pooled-test metrics (no site holds the pooled test data), no
    test-size-weighted means, and the global synthetic-only accuracy as
    the mean of the sites' (main.py pools it by test size: recomputed here from its rows)."""
    m = json.loads(json.dumps(main_metrics))
    assert m.pop("counts") == "exact (simulation)"

    def strip(rows, summary):
        sizes = [r["n_test"] for r in rows]
        for r in rows:
            for k in [*COUNTS, *(k for k in r if k.startswith(POOLED))]:
                r.pop(k)
        for k in [k for k in summary if k.endswith("_weighted") or k.startswith(POOLED)]:
            summary.pop(k)
        return sizes

    sizes = strip(m["clients"], m["summary"])
    for block in (m.get("lambda_protocol") or {}).values():
        strip(block["clients"], block["summary"])
    for per_metric in (m.get("downstream_modes") or {}).values():
        for block in per_metric.values():
            strip(block["clients"], block["summary"])
    glob = (m.get("fidelity") or {}).get("global_synthetic")
    if glob:
        assert glob.pop("n_test") == sum(sizes)
        glob.pop("acc"), glob.pop("at_chance")
        m["fidelity"].pop("synthetic_at_chance")
    return m, sizes


def assert_same_results(main_dir, flower_dir):
    """Equal metrics.json (but the wall time, the split sizes, which no site sends: see
    `without_counts`, and the config key) and config.json (but argv, versions, the database
    fingerprint and the split sha256, which each site keys with its secret); equal history.csv
    but the train loss, which stays on the sites under Flower."""
    ma, mb = read_metrics(main_dir), read_metrics(flower_dir)
    assert ma["cost"].pop("wall_seconds") > 0 and mb["cost"].pop("wall_seconds") > 0
    ma, _ = without_counts(ma)
    # the config key hashes the data's fingerprint, keyed by each site under Flower
    assert ma.pop("config_key") != mb.pop("config_key")
    assert mb.pop("counts") == "absent (deployment)"
    glob = (mb.get("fidelity") or {}).get("global_synthetic")
    if glob:
        assert 0.0 <= glob.pop("acc") <= 1.0 and glob.pop("at_chance") is None
        assert glob.pop("mean_of")
        mb["fidelity"].pop("synthetic_at_chance")
        # the per-client majority-rate test needs the test sizes, which no site sends
        assert mb["fidelity"].pop("synthetic_client_at_majority") is None
        assert isinstance(ma["fidelity"].pop("synthetic_client_at_majority"), bool)
    assert ma == mb
    history = read_csv(main_dir / "history.csv")
    assert history and all(row.pop("train_loss", "none (fedpft)") for row in history)
    assert read_csv(flower_dir / "history.csv") == history
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (main_dir, flower_dir))
    for c in (ca, cb):
        c.pop("argv"), c.pop("versions"), c.pop("config_key")
    for c, key in ((ca["database"], "fingerprint"), (ca, "split_sha256")):
        plain = c.pop(key)
        keyed = (cb["database"] if c is ca["database"] else cb).pop(key)
        assert keyed not in (plain, [plain] * 2)
    assert ca == cb
