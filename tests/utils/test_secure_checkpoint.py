"""A `--secure_noise` run keeps its private generator states and secret keys off the disk: it
writes no checkpoint, so nothing under its run directory lets a reader regenerate or rewind
its DP noise (utils.checkpoint.RoundCheckpoint, `enabled`)."""

from pathlib import Path

import pytest
import torch

import main as main_module
import utils.checkpoint as checkpoint_module
import utils.seeding as seeding
from algorithms.methods.dpcvae import CVAEClient

FLAGS = ["--n_clients", "2", "--quiet", "--method", "dpcvae", "--local_epochs", "2"]
FLAGS += ["--n_fedavg_rounds", "2", "--local_epochs_gen", "1", "--gen_batch_size", "16"]
FLAGS += ["--latent_dim", "4", "--hidden_dim", "16", "--secure_noise"]


class Interrupted(Exception):
    pass


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_adversarial_secure_run_leaves_no_generator_state_or_secret_on_disk(tmp_path, capsys):
    """After a secure run's first round (interrupted in its second), no file under the run
    directory holds any client's secret key or a slice of any private generator's state."""
    from helpers.databases import make_gaussian_db

    db = make_gaussian_db(tmp_path / "db", n_per_file=(200,))
    out = tmp_path / "run"
    secrets, generators, saves = [], [], []
    real_secret, real_private = seeding.new_secret, seeding.private_generator

    def record_secret() -> bytes:
        secrets.append(real_secret())
        return secrets[-1]

    def record_generator(*args, **kwargs):
        generators.append(real_private(*args, **kwargs))
        return generators[-1]

    real_fit = CVAEClient.fit
    states = []

    def fit_then_fail(self, weights, rnd):
        if rnd == 1:  # the state a round-0 checkpoint would have saved
            states.extend(g.get_state().numpy().tobytes() for g in generators)
            raise Interrupted
        return real_fit(self, weights, rnd)

    with pytest.MonkeyPatch.context() as mp:
        import algorithms.privacy.dp_client as dp_client

        mp.setattr(dp_client, "new_secret", record_secret)
        mp.setattr(dp_client, "private_generator", record_generator)
        real_save = checkpoint_module.save_checkpoint
        mp.setattr(
            checkpoint_module, "save_checkpoint", lambda *a: saves.append(a[2]) or real_save(*a)
        )
        mp.setattr(CVAEClient, "fit", fit_then_fail)
        with pytest.raises(Interrupted):
            main_module.main(["--database_root", str(db), "--results_dir", str(out), *FLAGS])
    assert secrets and states, "the secure run made no secret keys or generators"
    assert saves == []  # not even asked to save
    assert not (out / "checkpoint").exists()
    # 64-byte windows of each generator's Mersenne Twister words (skip torch's header)
    needles = [s for state in states for s in (state[24:88], state[2000:2064], state[-80:-16])]
    needles += secrets
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path} holds a private generator state or secret"
    # and --resume of a secure run is refused, naming the flag
    capsys.readouterr()
    args = ["--database_root", str(db), "--results_dir", str(out), *FLAGS, "--resume"]
    assert main_module.main(args) != 0
    assert "--secure_noise" in capsys.readouterr().err
