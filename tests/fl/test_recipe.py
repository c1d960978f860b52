"""docs/flower.md's one-machine recipe, run as written (a SuperLink, two SuperNodes started
through fl.supernode with their ledgers, `python -m fl.submit`): it completes on two default
hospital sites; and `fl.submit` ends a run that the sites refuse with status 1 and the rule."""

import os
import re
import subprocess

import pytest
from helpers.paths import REPO

from fl import submit
from fl.processes import descendants, free_port
from utils.results import read_metrics


def recipe() -> str:
    text = (REPO / "docs" / "flower.md").read_text()
    block = re.search(r"<!-- one-machine recipe -->\n```bash\n(.*?)```", text, re.S)
    assert block, "docs/flower.md has no one-machine recipe block"
    return block.group(1)


@pytest.mark.slow
@pytest.mark.xdist_group("flower-engines")  # one at a time: each starts several processes
def test_the_one_machine_recipe_runs_as_written(gauss_db, tmp_path):
    before = descendants([os.getpid()])
    work = tmp_path / "work"
    env = {**os.environ, "DB": str(gauss_db), "WORK": str(work), "PORT": str(free_port())}
    done = subprocess.run(
        ["bash", "-c", recipe()], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(work / "run")
    assert metrics["method"] == "dpfedpft" and metrics["clients"] == []
    assert [c["epsilon"] <= 1.0 for c in metrics["privacy"]["clients"]] == [True, True]
    assert descendants([os.getpid()]) <= before


def test_submit_exits_1_with_the_refusing_sites_rule(monkeypatch, capsys):
    """`python -m fl.submit` on a run that a site refuses (flwr's answers faked: no Flower
    process): exit status 1, and the last line names the site's rule (`flwr run --stream`
    would exit 0)."""
    rule = "client 1: --epsilon 50 exceeds max-epsilon 10"
    answers = {
        "run": {"success": True, "run-id": 7},
        "ls": {"runs": [{"status": "finished:failed"}]},
    }
    monkeypatch.setattr(submit, "flwr_json", lambda cmd, timeout: answers[cmd[1]])
    log = ["starting\n", f"fl.policy.Refusal: the run is refused by its sites' policies: {rule}\n"]

    class Stream:
        stdout = iter(log)

        def __init__(self, *args, **kwargs):
            pass

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(submit.subprocess, "Popen", Stream)
    assert submit.main([".", "--run-config", "x=1"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: run 7 finished:failed") and rule in last
