"""The Flower ClientApp: one site's side of the federation, with the same client objects and
end-of-run functions as main.py (algorithms/generative.py, algorithms/fedavg.py,
algorithms/evaluation.py).

Each message runs in a fresh process (deployment) or in a shared worker (simulation), so the
client object is rebuilt from its seed and restored from the node's Context.state, which holds
its whole state (model, optimizer, RNG states, accountant history) and never leaves the site.

Messages (what comes back is all that leaves the site):
- query: the client id, the embedding size and the number of classes;
- train: one local round from the global weights -> shared weights, sample count and the
  epsilon spent so far (the train loss is only printed to the site's log);
- evaluate.validate (fedavg, fedprox): the global head's validation accuracy;
- evaluate.synthesize (dpcvae, dpcgan, after the last round): synthesize from the global model and
  fit the two heads, locally -> the validation accuracy of the mixed model for each lambda of
  the grid, the fidelity of the synthetic data, and the client's privacy accounting;
- evaluate: test metrics, of the global head (fedavg) or of the mix at the chosen lambda.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from algorithms.dp_client import DPClient
from algorithms.evaluation import client_test_row, client_val_accuracies, lambda_grid
from algorithms.experiment import warn_privacy_settings
from algorithms.fedavg import FedAvgClient, make_fedavg_clients, val_accuracy
from algorithms.generative import finish_client, make_clients
from algorithms.heads import new_head, predict_proba
from algorithms.options import Settings
from data.clients import ClientData
from fl.records import load_state, record_weights, save_state, update_content
from fl.settings import is_generative, load_client, node_client_id, node_paths, run_settings
from utils.progress import set_quiet

app = ClientApp()

STATE = "client"  # the client object's state_dict() in Context.state
LAST_ROUND = "last-round"  # the last round this client trained (refuses replays)
TEST_PROBS = "test-probs"  # the two heads' test probabilities, kept for the lambda of the server


class Site:
    """This node's settings, client id and data for one message."""

    def __init__(self, context: Context):
        set_quiet(True)
        self.settings: Settings = run_settings(context.run_config)
        self.client_id = node_client_id(context.node_config)
        root, split = node_paths(context.node_config, self.settings)
        self.data, self.n_classes = load_client(root, split, self.client_id)
        self.context = context

    def client(self) -> DPClient | FedAvgClient:
        """The client object, restored to where the last message left it."""
        s = self.settings
        if is_generative(s):
            gen, dp = s.configs["generative"], s.configs["dp"]
            device = s.execution.device
            method = s.method.name
            client = make_clients(method, [self.data], self.n_classes, gen, dp, s.seed, device)[0]
        else:
            cfg, device = s.configs["fedavg"], s.execution.device
            client = make_fedavg_clients([self.data], self.n_classes, cfg, s.seed, device)[0]
        state = load_state(self.context.state, STATE)
        if state is not None:
            client.load_state_dict(state)
        return client

    def reply(self, msg: Message, records: dict) -> Message:
        records = {"client": MetricRecord({"id": self.client_id}), **records}
        return Message(RecordDict(records), reply_to=msg)


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Who this site is: its client id and the shapes the server needs (no data)."""
    site = Site(context)
    info = {
        "id": site.client_id,
        "dim": int(site.data.x_train.shape[1]),
        "n_classes": site.n_classes,
    }
    return Message(RecordDict({"client": MetricRecord(info)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round from the global weights; the client's state stays in Context.state."""
    site = Site(context)
    rnd = int(msg.content.config_records["config"]["round"])
    if LAST_ROUND in context.state:
        last = int(context.state.config_records[LAST_ROUND]["round"])
        if rnd <= last:
            raise RuntimeError(
                f"client {site.client_id}: asked for round {rnd + 1} after round {last + 1}"
            )
    else:
        warn_privacy_settings(site.settings.configs, [site.data])
    client = site.client()
    update = client.fit(record_weights(msg.content.array_records["weights"]), rnd)
    save_state(context.state, STATE, client.state_dict())
    context.state[LAST_ROUND] = ConfigRecord({"round": rnd})
    local = ", ".join(f"{k} {v:.4g}" for k, v in update.metrics.items())
    print(f"client {site.client_id}, round {rnd + 1}: {local}", flush=True)  # the site's log
    return Message(update_content(site.client_id, update), reply_to=msg)


@app.evaluate("validate")
def validate(msg: Message, context: Context) -> Message:
    """FedAvg's per-round check: the global head's accuracy on this site's validation set."""
    site = Site(context)
    head = _head(site.data, site.n_classes, msg.content.array_records["weights"])
    acc = val_accuracy(head, site.data)
    return site.reply(msg, {"val": MetricRecord({} if acc is None else {"acc": acc})})


@app.evaluate("synthesize")
def synthesize(msg: Message, context: Context) -> Message:
    """After the last round: synthesize from the global model and fit the heads, here; report
    the lambda-protocol validation accuracies, fidelity and privacy accounting."""
    site = Site(context)
    s = site.settings
    client = site.client()
    weights = record_weights(msg.content.array_records["weights"])
    result = finish_client(
        client,
        site.data,
        weights,
        site.n_classes,
        s.configs["generative"],
        s.configs["head"],
        s.seed,
    )
    context.state[TEST_PROBS] = ArrayRecord([result.local.test, result.global_.test])
    grid = lambda_grid(s.args.weights_grid_resolution)
    accs = client_val_accuracies(result.local, result.global_, site.data.y_val, grid)
    privacy = {k: v for k, v in client.privacy().items() if k != "id"}
    return site.reply(
        msg,
        {
            "lambda": MetricRecord({} if accs is None else {"val_acc": accs}),
            "fidelity": MetricRecord({"wasserstein": result.wasserstein, **result.quality}),
            "privacy": ConfigRecord({"json": json.dumps(privacy)}),
        },
    )


@app.evaluate()
def report(msg: Message, context: Context) -> Message:
    """This site's test metrics: of the global head (fedavg), or of the mix at the lambda the
    server chose from the validation accuracies (dpcvae, dpcgan)."""
    site = Site(context)
    if is_generative(site.settings):
        lam = float(msg.content.config_records["config"]["lambda"])
        if TEST_PROBS not in context.state:
            raise RuntimeError(f"client {site.client_id}: test metrics asked before synthesis")
        local_test, global_test = context.state.array_records[TEST_PROBS].to_numpy_ndarrays()
        row = client_test_row(site.data, local_test, global_test, lam)
    else:
        head = _head(site.data, site.n_classes, msg.content.array_records["weights"])
        row = client_test_row(site.data, None, predict_proba(head, site.data.x_test), None)
    return site.reply(msg, {"row": MetricRecord(row)})


def _head(data: ClientData, n_classes: int, weights: ArrayRecord) -> torch.nn.Module:
    head = new_head(data.x_train.shape[1], n_classes, 0)
    head.load_state_dict(record_weights(weights))
    return head
