"""`python -m fl.supernode`: a site's node config is checked when the hospital starts it (one line
naming the key or path, exit status 2), not when a run arrives."""

import subprocess
import sys

import pytest
from helpers.flower import hospital_node

from data.database import load_database
from data.partition import split_database
from data.split_config import SplitConfig
from fl.ledger import Ledger
from fl.run_local import node_config_text
from fl.supernode import check_node_config, main
from utils.io import write_json


@pytest.fixture
def node(gauss_db):
    split = gauss_db / "split.json"
    write_json(split, split_database(load_database(gauss_db), SplitConfig(n_clients=2)))
    return hospital_node(gauss_db, split, 1, **{"max-epsilon": 1})


def test_a_good_node_config_passes_and_says_what_it_serves(node, capsys):
    assert main(["--check", "--node-config", node_config_text(node)]) == 0
    out = capsys.readouterr().out
    assert "client 1, dataset hospital1" in out and "up to epsilon 1 a run" in out
    assert "budget epsilon 10, spent 0" in out


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_epsilon": 1}, "unknown key 'max_epsilon' (did you mean max-epsilon?)"),
        ({"database-root": None}, "must set database-root"),
        ({"dataset-id": None}, "must set dataset-id"),
        ({"database-root": "/nowhere/db"}, "database-root /nowhere/db: no embedding database"),
        ({"split-file": "/nowhere/s.json"}, "split-file /nowhere/s.json: no such file"),
        ({"client-id": 7}, "client-id 7 is not in split-file"),
        ({"dataset-id": "other"}, "python -m fl.ledger init"),
        ({"max-epsilon": "x"}, "max-epsilon must be a positive number"),
    ],
)
def test_a_bad_node_config_is_one_line_and_status_2(node, capsys, change, named):
    bad = {k: v for k, v in {**node, **change}.items() if v is not None}
    assert main(["--check", "--node-config", node_config_text(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err


def test_the_check_runs_before_flower_supernode_starts(node, tmp_path):
    """Without --check a bad config never reaches flower-supernode: one line, status 2."""
    bad = {**node, "budget-epsilon": 2}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl.supernode",
            "--insecure",
            "--node-config",
            node_config_text(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "budget-epsilon is no longer read" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert Ledger(node["ledger-dir"], node["dataset-id"], 1).read()["runs"] == {}
    assert "client" in check_node_config(node)
