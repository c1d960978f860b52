"""docs/flower.md's one-machine recipe, run as written (a SuperLink, two SuperNodes started
through fl.supernode with their ledgers, `python -m fl.submit`): it completes on two default
hospital sites, and a run that the sites refuse ends with status 1 and the sites' rule."""

import os
import re
import subprocess

import pytest
from helpers.paths import REPO

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
    outcomes = {}
    for epsilon in ("1", "50"):
        work = tmp_path / f"eps{epsilon}"
        env = {**os.environ, "DB": str(gauss_db), "WORK": str(work), "EPSILON": epsilon}
        env["PORT"] = str(free_port())
        done = subprocess.run(
            ["bash", "-c", recipe()],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        outcomes[epsilon] = (done, work)
    done, work = outcomes["1"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = read_metrics(work / "run")
    assert metrics["method"] == "dpfedpft" and metrics["clients"] == []
    assert [c["epsilon"] <= 1.0 for c in metrics["privacy"]["clients"]] == [True, True]
    done, work = outcomes["50"]
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run") and "--epsilon 50 exceeds max-epsilon 10" in last
    assert not (work / "run").exists()
    assert descendants([os.getpid()]) <= before
