"""The site's privacy ledger (fl/ledger.py) against a hostile coordinator: overlapping and
replayed messages, a restarted SuperNode, runs over the dataset's budget."""

import json
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
from flwr.app import Context, RecordDict
from helpers.flower import DPCVAE, SEEDED, SMALL, hospital_node, run_in_process
from helpers.paths import HELPERS

from fl import client_app
from fl.ledger import (
    DEFAULT_BUDGET_DELTA,
    DEFAULT_BUDGET_EPSILON,
    Charge,
    Claim,
    Ledger,
    LedgerError,
    read_ledger,
    spent,
)
from fl.policy import PERMISSIVE, Refusal
from fl.processes import descendants
from fl.run_local import run_local

BINDING = "b" * 64  # a run config's hash (fl.policy.run_binding)
ONE = Charge(BINDING, 1.0, 1e-5)  # a run at epsilon 1


def ledger_of(directory, site=0, epsilon=DEFAULT_BUDGET_EPSILON, delta=DEFAULT_BUDGET_DELTA):
    """An initialised ledger (dataset `hospital`) with its budget."""
    ledger = Ledger(directory, "hospital", site)
    ledger.initialise(epsilon, delta, exist_ok=True)
    return ledger


def _claim_round(directory, barrier, results) -> None:
    """One racer: wait for the others, then claim round 1 of run 7."""
    ledger = Ledger(directory, "hospital", 0)
    barrier.wait()
    try:
        ledger.claim(7, ONE, [Claim("train 0", "train round 1")])
        results.put("claimed")
    except Refusal:
        results.put("refused")


def test_adversarial_concurrent_claims_of_one_round_exactly_one_wins(tmp_path):
    """Four processes claim the same round at once: the lock makes claim-or-refuse atomic."""
    ledger_of(tmp_path)
    mp = multiprocessing.get_context("fork")
    barrier, results = mp.Barrier(4), mp.Queue()
    procs = [mp.Process(target=_claim_round, args=(tmp_path, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["claimed", "refused", "refused", "refused"]
    assert len(Ledger(tmp_path, "hospital", 0).read()["claims"]) == 1


def _run(ledger: Ledger, run_id: int, charge: Charge = ONE) -> None:
    """A run's first two train messages: the run is charged once, at its first claim."""
    ledger.claim(run_id, charge, [Claim("train 0", "train round 1")])
    ledger.claim(run_id, charge, [Claim("train 1", "train round 2")])


def test_adversarial_runs_over_the_datasets_budget_are_refused(tmp_path):
    """Two runs at epsilon 1 fit a budget of 2.5 (the ledger sums them); a third is refused at
    its first claim, and leaves nothing in the ledger."""
    ledger = ledger_of(tmp_path, epsilon=2.5, delta=1e-3)
    _run(ledger, 1)
    _run(ledger, 2)
    assert spent(ledger.read()) == pytest.approx((2.0, 2e-5))
    with pytest.raises(Refusal, match="client 0's site refuses: epsilon 3 .*budget 2.5"):
        _run(ledger, 3)
    assert len(ledger.read()["claims"]) == 4  # the refused run claimed nothing
    assert set(ledger.read()["runs"]) == {"1", "2"}
    with pytest.raises(Refusal, match="train round 2 of run 2 was already released"):
        ledger.claim(2, ONE, [Claim("train 1", "train round 2")])


def test_adversarial_the_ledger_command_prints_spent_and_left(tmp_path):
    ledger = ledger_of(tmp_path, site=3, epsilon=2.5, delta=1e-3)
    _run(ledger, 11)
    _run(ledger, 12)
    done = subprocess.run(
        [sys.executable, "-m", "fl.ledger", "show", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "budget: epsilon 2.5" in out and "spent:  epsilon 2," in out
    assert "left:   epsilon 0.5," in out
    assert "run 11  train round 1" in out and "run 12  train round 2" in out


def test_adversarial_a_corrupt_ledger_gives_one_error_naming_the_file(tmp_path):
    ledger = ledger_of(tmp_path)
    ledger.claim(1, ONE, [Claim("train 0", "train round 1")])
    path = ledger.path
    path.write_text('{"claims": [{"key": ')
    for named in (path, tmp_path / "missing"):
        where = str(named.parent if named == path else named)
        done = subprocess.run(
            [sys.executable, "-m", "fl.ledger", where], capture_output=True, text=True
        )
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and str(named) in done.stderr
    with pytest.raises(LedgerError, match=str(path)):  # a claim on it fails, not overwrites
        ledger.claim(2, ONE, [Claim("train 0", "train round 1")])
    assert path.read_text() == '{"claims": [{"key": '


def test_adversarial_replays_after_a_supernode_restart_are_refused(
    gauss_db,
    tmp_path,
    task_identity,  # noqa: F811 (fixture)
):
    """A restarted SuperNode (a new Context: fresh, or restored from an old snapshot) still
    sees the ledger: a replayed train round and replayed end-of-run steps are refused."""
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    node, context = next(iter(grid.contexts.items()))
    mine = [m for m in grid.sent if m.metadata.dst_node_id == node]
    first_train = next(m for m in mine if m.metadata.message_type == "train")
    fresh = Context(context.run_id, node, context.node_config, RecordDict(), context.run_config)
    with pytest.raises(
        Refusal, match=f"train round 1 of run {context.run_id} was already released"
    ):
        client_app.app(first_train, fresh)
    for kind in ("evaluate.synthesize", "evaluate"):
        msg = next(m for m in mine if m.metadata.message_type == kind)
        # restored from a snapshot taken before the step was answered
        state = RecordDict({k: v for k, v in context.state.items() if k != "answered"})
        restored = Context(context.run_id, node, context.node_config, state, context.run_config)
        with pytest.raises(
            Refusal, match=f"end-of-run {kind} of run {context.run_id} was already released"
        ):
            client_app.app(msg, restored)
    cid = context.node_config["partition-id"]
    book = read_ledger(next((gauss_db.parent / "ledger").glob(f"*client{cid}.ledger.json")))
    assert [c["what"] for c in book["claims"]][-2:] == [
        "end-of-run evaluate.synthesize",
        "end-of-run evaluate",
    ]


def test_adversarial_overlapping_train_messages_one_answer_one_refusal(
    gauss_db,
    tmp_path,
    task_identity,  # noqa: F811 (fixture)
):
    """Two train messages for one round handed the same Context.state snapshot, run at once
    (as two overlapping Flower tasks): one is answered, the other refused by the ledger."""
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    node, context = next(iter(grid.contexts.items()))
    train = next(
        m
        for m in grid.sent
        if m.metadata.dst_node_id == node and m.metadata.message_type == "train"
    )
    outcomes, start = [], threading.Barrier(2)

    def task() -> None:
        snapshot = Context(2, node, context.node_config, RecordDict(), context.run_config)
        start.wait()
        try:
            client_app.app(train, snapshot)
            outcomes.append("answered")
        except Refusal as e:
            outcomes.append(f"refused: {e}")

    threads = [threading.Thread(target=task) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(o.split(":")[0] for o in outcomes) == ["answered", "refused"]
    assert any("train round 1 of run 2 was already released" in o for o in outcomes)


@pytest.mark.slow
@pytest.mark.xdist_group("flower-engines")  # one at a time: each starts several processes
def test_adversarial_overlapping_train_messages_on_loopback_deployment(gauss_db, tmp_path):
    """The real deployment engine (SuperLink, two SuperNodes): a hostile ServerApp sends each
    site two train messages for round 1 at once; each site answers one and refuses the other."""
    before = descendants([os.getpid()])
    argv = ["--database_root", str(gauss_db), *SMALL, *DPCVAE]
    run_local(
        main_argv=[*argv, "--results_dir", str(tmp_path / "r")],
        engine="deployment",
        work_dir=tmp_path / "work",
        timeout=300,
        env={"OMP_NUM_THREADS": "1"},
        node_config=SEEDED,
        server_app=HELPERS / "hostile_server.py",
    )
    assert descendants([os.getpid()]) <= before
    replies = json.loads((tmp_path / "r" / "hostile.json").read_text())
    assert len(replies) == 4
    for node in {r["node"] for r in replies}:
        mine = [r["refusal"] for r in replies if r["node"] == node]
        assert sorted(m is None for m in mine) == [False, True], mine  # one answer, one refusal
        refusal = next(m for m in mine if m)
        assert "site refuses" in refusal and "round 1" in refusal
    ledgers = sorted((tmp_path / "work" / "ledger").glob("*.ledger.json"))
    assert len(ledgers) == 2  # one per site, in run_local's ledger dir
    for path in ledgers:  # one claim of the round (the refused task claimed nothing)
        claims = [c["what"] for c in read_ledger(path)["claims"]]
        assert claims.count("train round 1") == 1, claims


def test_adversarial_a_second_run_over_the_sites_budget_is_refused_by_the_clientapp(
    gauss_db,
    tmp_path,
    task_identity,  # noqa: F811 (fixture)
):
    """Two runs at epsilon 1 against sites whose per-dataset budget is 1.5 (set in their
    ledgers): the first runs, the second is refused at the start, by every site, before any
    train message, and leaves no run directory."""
    split = gauss_db / "split.json"
    nodes = [
        hospital_node(gauss_db, split, i, **{**PERMISSIVE, **SEEDED, "max-epsilon": 2})
        for i in (1, 0)
    ]
    for i in (0, 1):
        Ledger(nodes[0]["ledger-dir"], f"hospital{i}", i).set_budget(1.5, 1e-3)
    run_in_process(gauss_db, tmp_path / "a", DPCVAE, nodes)
    with pytest.raises(Refusal, match="epsilon 2 in all would exceed the dataset's budget 1.5"):
        run_in_process(gauss_db, tmp_path / "b", DPCVAE, nodes)
    assert not (tmp_path / "b").exists()
