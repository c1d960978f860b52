"""DP-FedAvg on Flower sites (in process): a strict site (max-epsilon 1) that releases its
metrics builds the method's DP client and trains with DP; a default site refuses it at the
start (FedAvg's flow evaluates with heads the coordinator sends)."""

import pytest
from flwr.app import Context, RecordDict
from helpers.flower import SEEDED, SMALL, InProcessGrid, hospital_node

from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl import server_app
from fl.policy import Refusal
from utils.io import write_json
from utils.results import read_metrics

ARGS = ["--method", "dpfedavg", "--n_rounds", "2", "--local_steps", "1", "--delta", "1e-5"]


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every reply."""

    def __init__(self, node_configs, run_config):
        super().__init__(node_configs, run_config)
        self.replies = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies.extend(replies)
        return replies


def run(db, out, **policy):
    split = db / "split.json"
    if not split.exists():
        write_json(split, split_database(load_database(db), SplitConfig(n_clients=2)))
    argv = ["--database_root", str(db), "--split_file", str(split), *SMALL, *ARGS]
    config = {"main-args": " ".join([*argv, "--results_dir", str(out)])}
    nodes = [hospital_node(db, split, cid, **SEEDED, **policy) for cid in (1, 0)]
    grid = RecordingGrid(nodes, config)
    server_app.app(grid, Context(1, 0, {}, RecordDict(), config))
    return grid


def test_a_strict_site_that_releases_metrics_trains_dpfedavg_with_dp(
    gauss_db, tmp_path, task_identity
):
    grid = run(gauss_db, tmp_path / "r", **{"max-epsilon": 1, "release-metrics": "true"})
    assert not any(r.has_error() for r in grid.replies)
    trains = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert len(trains) == 2 * 2  # two rounds, two sites
    spent = [float(r.content.metric_records["metrics"]["epsilon"]) for r in trains]
    assert all(0 < e <= 1.0 for e in spent)
    assert max(spent) > 0.9  # the last round spends (almost) the whole target
    metrics = read_metrics(tmp_path / "r")
    assert metrics["method"] == "dpfedavg" and metrics["private"] is True
    # the privacy block holds each site's accounting: the epsilon of its last train reply
    lines = metrics["privacy"]["clients"]
    assert sorted(line["epsilon"] for line in lines) == pytest.approx(sorted(spent[-2:]))
    assert metrics["privacy"]["epsilon_max"] <= 1.0


def test_a_default_site_refuses_dpfedavg_at_the_start(gauss_db, tmp_path, task_identity):
    """The default policy releases no metrics: refused before any round."""
    with pytest.raises(Refusal, match="release-metrics=false"):
        run(gauss_db, tmp_path / "r")
