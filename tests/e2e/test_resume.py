"""Interrupted runs: a checkpoint after every round, and `--resume` finishes with the results of
an uninterrupted run (metrics.json and history.csv, wall time aside)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.paths import REPO
from helpers.tiny import FAST, tiny

import algorithms.experiment as experiment
import algorithms.federation.vectorized as vectorized
import main as main_module
import utils.checkpoint as checkpoint_module
from algorithms.methods import registry
from algorithms.methods.dpcvae import CVAEClient
from utils.results import read_metrics

# one xdist worker runs the whole module: the module-scoped runs below are made once, not
# once per worker
pytestmark = pytest.mark.xdist_group("test_resume")

# The cases come from the registry: every method, and every method that reads the dp section
# again with --dp off. A method trained in rounds (its flow's rounds flag) gets 3 rounds in all
# (interrupted after round 2, the last one is trained again); generative batches of 16, so that
# each epoch takes several DP steps, not one step over the whole client; Adam and partial
# participation for FedProx, so that optimizer state and client sampling must survive the
# interruption. A method without rounds writes no checkpoint: it is interrupted before its
# results and resumed from the start.
ROUNDS_FLAG = {"fedavg": "n_rounds", "generative": "n_fedavg_rounds"}
HARDER = {"fedprox": {"optimizer": "adam", "sampling_rate": 0.67}}


def case_flags(m: registry.Method) -> list[str]:
    changes: dict[str, object] = {}
    if m.flow in ROUNDS_FLAG:
        changes[ROUNDS_FLAG[m.flow]] = 3
    if m.flow == "generative":
        changes["gen_batch_size"] = 16
    return ["--method", m.name, *tiny(m.name, **changes, **HARDER.get(m.name, {}))]


def with_dp_off(methods: list[registry.Method]) -> dict[str, list[str]]:
    cases = {m.name: case_flags(m) for m in methods}
    dp = [m.name for m in methods if "dp" in m.sections]
    return cases | {f"{name}-dp-off": [*cases[name], "--dp", "off"] for name in dp}


ROUNDED = [m for m in registry.METHODS if m.flow in ROUNDS_FLAG]
CASES = with_dp_off(ROUNDED) | {
    "dpcvae-threads": [*case_flags(registry.get("dpcvae")), "--num_threads", "2"],
    # every client at once: the stacked state is written back into the clients' checkpoints
    "dpcvae-vectorized": [*case_flags(registry.get("dpcvae")), "--vectorized", "on"],
}
ONE_PASS = with_dp_off([m for m in registry.METHODS if m.flow not in ROUNDS_FLAG])
ALL_CASES = CASES | ONE_PASS


def metrics_text(run_dir: Path) -> str:
    """metrics.json without the wall time, as canonical JSON (every other byte must match)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["cost"].pop("wall_seconds")
    return json.dumps(metrics, sort_keys=True)


def assert_same_results(a: Path, b: Path) -> None:
    assert metrics_text(a) == metrics_text(b)
    assert (a / "history.csv").read_bytes() == (b / "history.csv").read_bytes()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from helpers.databases import make_gaussian_db

    return make_gaussian_db(tmp_path_factory.mktemp("resume") / "db", n_per_file=(400,))


@pytest.fixture(scope="module")
def clean(db, tmp_path_factory):
    """Uninterrupted runs, made once per case (one torch thread)."""
    root = tmp_path_factory.mktemp("clean")
    done = {}

    def get(case: str) -> Path:
        if case not in done:
            out = root / case
            flags = list(ALL_CASES[case])
            if "--num_threads" in flags:  # the flag and its value
                at = flags.index("--num_threads")
                del flags[at : at + 2]
            assert run(db, out, *flags) == 0
            done[case] = out
        return done[case]

    return get


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(db: Path, out: Path, *extra: str) -> int:
    return main_module.main(["--database_root", str(db), "--results_dir", str(out), *FAST, *extra])


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, rounds: int) -> None:
    """Make the run fail right after the checkpoint of round `rounds` is written."""
    real = checkpoint_module.save_checkpoint

    def save_then_fail(directory, state, step):
        real(directory, state, step)
        if step == rounds:
            raise Interrupted

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_fail)


def record_rounds(monkeypatch) -> list[int]:
    """The rounds in which any client trains, in order."""
    rounds = []
    for cls in {m.client for m in ROUNDED if m.client is not None}:
        real = cls.fit

        def fit(self, weights, rnd, real=real):
            rounds.append(rnd)
            return real(self, weights, rnd)

        monkeypatch.setattr(cls, "fit", fit)
    real_round = vectorized._Engine.fit_round  # every client at once

    def fit_round(self, chosen, weights, rnd):
        rounds.append(rnd)
        return real_round(self, chosen, weights, rnd)

    monkeypatch.setattr(vectorized._Engine, "fit_round", fit_round)
    return rounds


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_run_resumes_to_the_uninterrupted_results(db, clean, tmp_path, capsys, case):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, 2)
        with pytest.raises(Interrupted):
            run(db, out, *CASES[case])
    ckpt = out / "checkpoint"
    assert not (out / "metrics.json").exists()
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "tensors_000002.safetensors"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2

    # without --resume the interrupted run is neither discarded nor silently restarted
    capsys.readouterr()
    assert run(db, out, *CASES[case]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1

    with pytest.MonkeyPatch.context() as mp:
        rounds = record_rounds(mp)
        assert run(db, out, *CASES[case], "--resume") == 0
    assert set(rounds) == {2}  # only the last round was trained again
    assert "resuming from" in capsys.readouterr().err
    assert_same_results(clean(case), out)
    assert not ckpt.exists()  # removed once the results are written
    if "--dp" in CASES[case]:  # --dp off: nothing private was shared, and it says so
        assert read_metrics(out)["private"] is False


@pytest.mark.parametrize("case", list(ONE_PASS))
def test_a_method_without_rounds_resumes_from_the_start(db, clean, tmp_path, case):
    """Interrupted before its results (no checkpoint: nothing is trained in rounds), the run
    leaves nothing half-written; `--resume` runs it again from the start, to the results of an
    uninterrupted run."""
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:

        def fail(**kwargs):
            raise Interrupted

        mp.setattr(experiment, "close_run", fail)
        with pytest.raises(Interrupted):
            run(db, out, *ONE_PASS[case])
    assert not (out / "config.json").exists() and not (out / "metrics.json").exists()
    assert run(db, out, *ONE_PASS[case], "--resume") == 0
    assert_same_results(clean(case), out)
    if "--dp" in ONE_PASS[case]:
        assert read_metrics(out)["private"] is False


def test_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(db, clean, tmp_path):
    """A real process, killed (SIGKILL) between writing the last round's tensors and its
    state.json: the resumed run trains that round again from round 2's checkpoint."""
    out = tmp_path / "run"
    flags = ["--database_root", str(db), "--results_dir", str(out), *FAST, *CASES["dpcvae"]]
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        import main
        import utils.checkpoint as c
        real = c.atomic_path
        def atomic_then_die(path):
            done = os.path.join(os.path.dirname(path), "tensors_000003.safetensors")
            if str(path).endswith("state.json") and os.path.exists(done):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path)
        c.atomic_path = atomic_then_die
        sys.exit(main.main({flags!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    names = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert names == ["state.json", "tensors_000002.safetensors", "tensors_000003.safetensors"]

    assert main_module.main([*flags, "--resume"]) == 0
    assert_same_results(clean("dpcvae"), out)


def test_resume_refuses_other_flags_and_a_damaged_checkpoint(db, tmp_path, capsys):
    out = tmp_path / "run"
    flags = CASES["fedlambda"]
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, 1)
        with pytest.raises(Interrupted):
            run(db, out, *flags)
    capsys.readouterr()
    assert run(db, out, *flags, "--seed", "5", "--resume") == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "config.json" in err
    assert run(db, out, *flags, "--resume", "--overwrite") == 2
    assert "exclude each other" in capsys.readouterr().err

    (out / "checkpoint" / "tensors_000001.safetensors").write_bytes(b"garbage")
    assert run(db, out, *flags, "--resume") == 2
    err = capsys.readouterr().err
    assert "does not match" in err and len(err.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()

    # --overwrite starts over; then --resume on the finished run does nothing
    assert run(db, out, *flags, "--overwrite") == 0
    before = (out / "metrics.json").read_text()
    assert run(db, out, *flags, "--resume") == 0
    assert (out / "metrics.json").read_text() == before
    assert "finished run" in capsys.readouterr().err


def test_resume_without_a_checkpoint_runs_from_the_start(db, clean, tmp_path):
    out = tmp_path / "run"
    assert run(db, out, *CASES["fedlambda"], "--resume") == 0
    assert_same_results(clean("fedlambda"), out)


def test_run_interrupted_after_its_last_round_only_finishes(db, clean, tmp_path):
    """Killed between the last round and metrics.json: --resume trains no round again."""
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, 3)
        with pytest.raises(Interrupted):
            run(db, out, *CASES["dpcvae"])
    with pytest.MonkeyPatch.context() as mp:
        rounds = record_rounds(mp)
        assert run(db, out, *CASES["dpcvae"], "--resume") == 0
    assert rounds == []
    assert_same_results(clean("dpcvae"), out)


def test_checkpoint_interval_skips_writes_and_a_resume_replays_the_rounds(db, clean, tmp_path):
    """With --checkpoint_interval longer than the run nothing is written; a run killed in its
    last round then resumes from the start and still ends with the uninterrupted results."""
    out = tmp_path / "run"
    flags = [*CASES["dpcvae"], "--checkpoint_interval", "1e9"]
    saves = []
    with pytest.MonkeyPatch.context() as mp:
        real_save = checkpoint_module.save_checkpoint
        mp.setattr(
            checkpoint_module, "save_checkpoint", lambda *a: saves.append(a[2]) or real_save(*a)
        )
        real_fit = CVAEClient.fit

        def fit_then_fail(self, weights, rnd):
            if rnd == 2:
                raise Interrupted
            return real_fit(self, weights, rnd)

        mp.setattr(CVAEClient, "fit", fit_then_fail)
        with pytest.raises(Interrupted):
            run(db, out, *flags)
    assert saves == [] and not (out / "checkpoint" / "state.json").exists()
    with pytest.MonkeyPatch.context() as mp:
        rounds = record_rounds(mp)
        assert run(db, out, *flags, "--resume") == 0
    assert sorted(set(rounds)) == [0, 1, 2]  # every round trained again
    assert_same_results(clean("dpcvae"), out)
