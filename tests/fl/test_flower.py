"""The Flower app: the apps' protocol in process (a grid that calls the ClientApp directly) and
the real engines on loopback, all against main.py (the client state: test_flower_state.py)."""

import os
import shutil
import subprocess
import sys

import pytest
from flwr.app import Context, RecordDict
from helpers.flower import (
    DPCVAE,
    FEDAVG,
    HEAD,
    SEEDED,
    SMALL,
    assert_same_results,
    hospital_node,
    run_in_process,
)
from helpers.tiny import TINY

import main as main_module
from algorithms.methods import registry
from algorithms.privacy import accounting
from fl import client_app
from fl.policy import PERMISSIVE
from fl.processes import LocalRunError, descendants
from fl.run_local import run_local
from fl.settings import SettingsError, node_client_id, run_settings
from utils.io import read_csv
from utils.results import read_metrics


@pytest.mark.parametrize("args", [DPCVAE, FEDAVG], ids=["dpcvae", "fedavg"])
def test_flower_apps_give_main_py_results(gauss_db, tmp_path, args, task_identity):
    argv, grid = run_in_process(gauss_db, tmp_path / "flower", args)
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "main")]) == 0
    assert_same_results(tmp_path / "main", tmp_path / "flower")
    # What went out: one hello, then per round one train message per client; the weights sent
    # are the shared part only (the decoder, or the linear head).
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds[:2] == ["query", "query"]
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    n_rounds = 2 if args is DPCVAE else 3
    assert len(trains) == 2 * n_rounds
    sent_keys = set(trains[0].content.array_records["weights"])
    if args is DPCVAE:
        assert sent_keys and all(k.startswith("decoder.") for k in sent_keys)
        assert kinds[-4:] == ["evaluate.synthesize"] * 2 + ["evaluate"] * 2
    else:
        assert sent_keys == {"weight", "bias"}


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "dpcgan", *HEAD, "--n_fedavg_rounds", "2", "--local_epochs_gen", "1"],
        [*FEDAVG, "--sampling_rate", "0.5"],
        [*DPCVAE, "--disable_dp"],
        ["--method", "fedprox", "--n_rounds", "2"],
        ["--method", "fedpft", *HEAD, "--pft_components", "2"],
        ["--method", "dpfedpft", *HEAD, "--pft_covariance", "full"],
    ],
    ids=["dpcgan", "fedavg-sampled", "dpcvae-no-dp", "fedprox", "fedpft", "dpfedpft"],
)
def test_other_methods_and_partial_participation_give_main_py_results(
    gauss_db, tmp_path, args, task_identity
):
    argv, _ = run_in_process(gauss_db, tmp_path / "flower", args)
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "main")]) == 0
    assert_same_results(tmp_path / "main", tmp_path / "flower")


def test_a_replayed_round_is_refused_and_the_state_stays_local(gauss_db, tmp_path, task_identity):
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    context = next(iter(grid.contexts.values()))
    first_train = next(m for m in grid.sent if m.metadata.message_type == "train")
    # trained again from a stored state that is past round 1: refused, not trained twice
    with pytest.raises(RuntimeError, match="asked for round 1 after round 2"):
        client_app.app(first_train, context)
    # the whole client state stays in the node's Context.state, never in a reply
    assert {"client.arrays", "client.skeleton", "last-round"} <= set(context.state)


def test_a_site_calibrates_its_noise_once_per_run(gauss_db, tmp_path, task_identity, monkeypatch):
    """A deployed site runs each message in a new process: the noise multiplier that its first
    train message calibrates is kept in Context.state with what it was calibrated from, and
    later messages take it from there instead of searching again (results: the tests above)."""
    searches = []
    search = accounting._noise_multiplier.__wrapped__  # uncached: count every search
    monkeypatch.setattr(
        accounting, "_noise_multiplier", lambda **kw: searches.append(kw) or search(**kw)
    )
    monkeypatch.setattr(accounting, "_REMEMBERED", {})
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    assert len(searches) == 2  # one per site, at its first train message (then 2 more messages)
    for context in grid.contexts.values():
        known = context.state.config_records["calibration"]
        assert accounting._REMEMBERED[str(known["key"])] == float(known["noise-multiplier"])


def test_the_clientapp_module_does_not_import_opacus():
    """Opacus (with SciPy's statistics and sympy) is imported on first DP use only: a ClientApp
    process that trains no DP-SGD client starts without it."""
    code = "import sys, fl.client_app; sys.exit('opacus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_train_reply_holds_weights_sample_count_and_epsilon_only(
    gauss_db, tmp_path, task_identity
):
    _, grid = run_in_process(gauss_db, tmp_path / "r", DPCVAE)
    fresh = Context(1, 1000, {"partition-id": 0}, RecordDict(), grid.contexts[1000].run_config)
    train = next(m for m in grid.sent if m.metadata.message_type == "train")
    reply = client_app.app(train, fresh)
    assert set(reply.content) == {"weights", "client", "metrics"}
    assert set(reply.content.array_records["weights"]) == set(
        train.content.array_records["weights"]
    )
    assert dict(reply.content.metric_records["client"])["id"] == 0
    # the train loss is computed on the training records without noise: it stays here
    assert set(reply.content.metric_records["metrics"]) == {"epsilon"}


@pytest.mark.parametrize("method", ["fedpft", "dpfedpft"])
def test_a_pft_site_releases_once_and_sends_no_sample_count(
    gauss_db, tmp_path, task_identity, method
):
    """FedPFT's one round: the release, a sample count of 0 (the server pools the released
    counts) and, under DP, the spent epsilon; a second release is refused (it would spend the
    budget again)."""
    _, grid = run_in_process(gauss_db, tmp_path / "r", ["--method", method, *HEAD])
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(trains) == 2 and not trains[0].content.array_records["weights"]
    context = Context(1, 1000, {"partition-id": 0}, RecordDict(), grid.contexts[1000].run_config)
    reply = client_app.app(trains[0], context)
    assert set(reply.content) == {"weights", "client", "metrics"}
    released = set(reply.content.array_records["weights"])
    expected = {"count", "sum", "moment"} if method == "dpfedpft" else {"count", "weights"}
    assert expected <= released
    assert dict(reply.content.metric_records["client"]) == {"id": 0, "n_samples": 0}
    sent = set(reply.content.metric_records["metrics"])
    assert sent == ({"epsilon"} if method == "dpfedpft" else set())
    with pytest.raises(RuntimeError, match="asked for round 1 after round 1"):
        client_app.app(trains[0], context)


def test_a_client_that_cannot_start_is_named(gauss_db, tmp_path, task_identity):
    """Two sites claiming one client id stop the run; a site that cannot load its client is
    named, in words that hold none of its paths (the reason stays in its log)."""
    split = gauss_db / "split.json"
    same = [hospital_node(gauss_db, split, 0, **PERMISSIVE) for _ in range(2)]
    with pytest.raises(SettingsError, match="claim client-id 0"):
        run_in_process(gauss_db, tmp_path / "r", DPCVAE, same)
    nodes = [hospital_node(gauss_db, split, cid, **PERMISSIVE) for cid in (0, 5)]
    with pytest.raises(RuntimeError, match="client 5's site could not answer query") as err:
        run_in_process(gauss_db, tmp_path / "s", DPCVAE, nodes)
    assert str(gauss_db) not in str(err.value)


def test_a_site_reads_its_own_database_and_split_from_node_config(
    gauss_db, tmp_path, task_identity
):
    """In deployment each site names its own paths (--node-config); here client 1 reads a copy
    of the database elsewhere, with the same results."""
    run_in_process(gauss_db, tmp_path / "a", DPCVAE)
    site = tmp_path / "site1"
    shutil.copytree(gauss_db, site)
    nodes = [
        hospital_node(gauss_db, gauss_db / "split.json", 0, **SEEDED, **PERMISSIVE),
        hospital_node(site, site / "split.json", 1, **SEEDED, **PERMISSIVE),
    ]
    run_in_process(gauss_db, tmp_path / "b", DPCVAE, nodes)
    assert read_metrics(tmp_path / "a")["clients"] == read_metrics(tmp_path / "b")["clients"]
    assert read_csv(tmp_path / "a" / "history.csv") == read_csv(tmp_path / "b" / "history.csv")


def test_settings_are_main_py_flags_with_absolute_paths(tmp_path):
    base = f"--database_root {tmp_path} --split_file {tmp_path}/s.json --results_dir {tmp_path}/r"
    s = run_settings({"main-args": f"{base} --method dpcvae --n_fedavg_rounds 3"})
    assert s.method.name == "dpcvae" and s.configs.generative.n_rounds == 3 and s.seed == 3407
    assert not s.execution.vectorized  # a site is one client, whatever its device
    for bad, needle in [
        (f"{base} --method local", "does not run on Flower"),
        (f"{base} --method dpcvae --split_file s.json", "--split_file must be an absolute"),
        (f"{base} --method dpcvae --results_dir r", "--results_dir must be an absolute"),
        (f"{base} --method dpcvae --epsilon -1", "--epsilon"),
        (f"{base} --method nope", "invalid choice"),
        (f"{base} --method dpcvae --save_synthetic", "stays on the sites"),
        (f"{base} --method dpcvae --vectorized on", "each site is one client"),
    ]:
        with pytest.raises(SettingsError, match=needle):
            run_settings({"main-args": bad})
    assert node_client_id({"client-id": 3}) == 3 and node_client_id({"partition-id": 1}) == 1
    with pytest.raises(SettingsError, match="client-id"):
        node_client_id({})


@pytest.mark.slow
@pytest.mark.xdist_group("flower-engines")  # one at a time: each starts several processes
def test_simulation_engine_equals_main(gauss_db, tmp_path):
    """Flower's simulation engine (Ray, one simulated SuperNode per client), FedAvg with its
    per-round validation: the same results files as main.py, and no process left behind."""
    argv = ["--database_root", str(gauss_db), *SMALL, *FEDAVG]
    before = descendants([os.getpid()])
    run = run_local(
        main_argv=[*argv, "--results_dir", str(tmp_path / "flower")],
        engine="simulation",
        work_dir=tmp_path / "work",
        timeout=600,
    )
    assert run.status == "finished:completed"
    assert descendants([os.getpid()]) <= before
    assert main_module.main([*argv, "--results_dir", str(tmp_path / "main")]) == 0
    assert_same_results(tmp_path / "main", tmp_path / "flower")


@pytest.mark.slow
@pytest.mark.xdist_group("flower-engines")
def test_a_failed_local_run_stops_every_process(gauss_db, tmp_path):
    """A run that cannot finish in time raises, and leaves no SuperLink, SuperNode or app
    process behind."""
    argv = ["--database_root", str(gauss_db), *SMALL, *DPCVAE, "--n_fedavg_rounds", "50"]
    before = descendants([os.getpid()])
    with pytest.raises(LocalRunError, match="logs|timed out|did not"):
        run_local(
            main_argv=[*argv, "--results_dir", str(tmp_path / "r")],
            engine="deployment",
            work_dir=tmp_path / "work",
            timeout=15,
        )
    assert descendants([os.getpid()]) <= before
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("method", registry.flower_methods())
def test_every_flower_method_runs_under_the_flower_helper(
    gauss_db, tmp_path, task_identity, method
):
    """Every method the registry marks `flower` runs end to end under the in-process Flower apps
    (its tiny flags), and one that shares DP releases reports each site's spent epsilon."""
    run_in_process(gauss_db, tmp_path / "r", ["--method", method, *TINY[method]])
    metrics = read_metrics(tmp_path / "r")
    assert metrics["method"] == method and len(metrics["clients"]) == 2
    if registry.get(method).private and "dp" in registry.get(method).sections:
        epsilons = [c["epsilon"] for c in metrics["privacy"]["clients"]]
        target = metrics["privacy"]["target_epsilon"]
        assert len(epsilons) == 2 and all(0 < e <= target + 1e-9 for e in epsilons)
