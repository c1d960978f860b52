"""Test-wide settings: offline hub, one torch thread per xdist worker, headless plots."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402
from helpers.databases import make_gaussian_db  # noqa: E402


@pytest.fixture
def gauss_db(tmp_path):
    """A 600-sample, 16-d, 4-class database in one file."""
    return make_gaussian_db(tmp_path / "db", n_per_file=(600,))


@pytest.fixture
def task_identity(monkeypatch):
    """What Flower's runtime sets in a ServerApp process (messages are stamped with it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def pytest_collection_modifyitems(config, items):
    """The slow tests first, each set in file order: under `make test` (2 workers) the longest
    runs start at once and the fast tests fill the other worker, instead of the slow ones
    running last, side by side with nothing else."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
