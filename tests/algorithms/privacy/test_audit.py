"""Empirical privacy audit: the statistics, the canaries, and the attack's power and validity.

The end-to-end tests use a setting made to show leakage clearly when DP is off: 128-d Gaussian
class clusters, 2 clients of one class each (`pathological_split`, 1 shard: ~48 training records,
two classes used by nobody), 48 orthogonal canaries of an unused class in the smaller client,
10 rounds x 40 full-batch epochs. With DP on (epsilon 1, same settings) every bound must stay
below the spent epsilon.
"""

import json
import math
import re

import numpy as np
import pytest
from helpers.databases import make_gaussian_db
from scipy.stats import binom

import main as main_module
from algorithms.privacy.audit import canaries, cli, stats
from algorithms.privacy.audit import run as audit_run
from data.clients import ClientData
from data.features import squash
from utils.cli import config_from_args
from utils.results import read_metrics

RUN_FLAGS = [
    "--n_clients", "2", "--split_method", "pathological_split", "--n_shards", "1",
    "--n_fedavg_rounds", "10", "--local_epochs_gen", "40", "--gen_batch_size", "256",
    "--latent_dim", "8", "--local_epochs", "5", "--quiet",
]  # fmt: skip
K = 48


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_gaussian_db(tmp_path_factory.mktemp("audit") / "db", dim=128, n_classes=4)


def finished_run(db, out, method="dpcvae", *extra):
    args = ["--database_root", str(db), "--results_dir", str(out), "--method", method]
    cvae = ["--hidden_dim", "64"] if method == "dpcvae" else []  # the CGAN's widths are fixed
    assert main_module.main([*args, *RUN_FLAGS, *cvae, *extra]) == 0
    return out


# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 20), (7, 20), (20, 20), (33, 64)])
def test_clopper_pearson_bounds_have_the_binomial_tail_mass(k, n):
    lo, hi = stats.clopper_pearson(k, n, 0.025)
    if k > 0:  # P(X >= k | p = lo) = alpha
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    else:
        assert lo == 0.0
    if k < n:  # P(X <= k | p = hi) = alpha
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, rel=1e-6)
    else:
        assert hi == 1.0
    assert lo <= k / n <= hi


def test_perfect_separation_reaches_the_ceiling_and_equal_scores_give_nothing():
    members, nonmembers = np.arange(50.0, 100.0), np.arange(50.0)
    s = stats.attack_summary(members, nonmembers, delta=1e-5, confidence=0.95)
    assert s["auc"] == 1.0 and s["tpr_at_fpr_0.01"] == 1.0
    # 100 thresholds: each one-sided interval at 0.05 / 200; TPR 50/50 and FPR 0/50
    a = 0.05 / 200
    expected = math.log((a ** (1 / 50) - 1e-5) / (1 - a ** (1 / 50)))
    assert s["eps_lb"] == pytest.approx(expected, rel=1e-9)
    assert s["eps_lb_ceiling"] == pytest.approx(expected, rel=1e-9)
    same = stats.attack_summary(np.zeros(50), np.zeros(50), delta=1e-5, confidence=0.95)
    assert same["auc"] == 0.5 and same["eps_lb"] == 0.0
    flipped = stats.attack_summary(nonmembers, members, delta=1e-5, confidence=0.95)
    assert flipped["auc"] == 0.0 and flipped["eps_lb"] == 0.0


def test_tpr_at_fpr_reads_the_roc():
    members = np.array([10.0, 9, 8, 3, 2])
    nonmembers = np.array([7.0, 1, 0, -1, -2])
    assert stats.tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(0.6)
    assert stats.tpr_at_fpr(members, nonmembers, 0.2) == pytest.approx(1.0)
    assert stats.auc(members, nonmembers) == pytest.approx(23 / 25)


def test_lower_bound_is_valid_and_close_on_randomized_response():
    # Randomized response is exactly eps-DP: a member answers 1 with e^eps / (1 + e^eps), a
    # non-member with 1 / (1 + e^eps). The bound must stay below eps and get close with many
    # trials; with eps = 0 (no information) it must stay at 0.
    eps, n = 1.0, 4000
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(20):
        members = (rng.random(n) < p).astype(float)
        nonmembers = (rng.random(n) < 1 - p).astype(float)
        bounds.append(stats.attack_summary(members, nonmembers, 0.0, 0.95)["eps_lb"])
    assert max(bounds) <= eps and min(bounds) > 0.8
    null = [
        stats.attack_summary(rng.normal(size=64), rng.normal(size=64), 1e-4, 0.95)["eps_lb"]
        for _ in range(50)
    ]
    assert max(null) == 0.0


# --- canaries --------------------------------------------------------------------------------


def test_canaries_are_standardized_and_orthogonal_in_model_space():
    x, design = canaries.make_canaries(96, 128, seed=1)
    assert design == "hadamard" and x.shape == (96, 128)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-5)
    s = squash(x, 2.0).astype(np.float64) - 0.5
    gram = s @ s.T
    np.testing.assert_allclose(gram, gram[0, 0] * np.eye(96), atol=1e-4)
    assert canaries.make_canaries(10, 16, seed=1)[1] == "hadamard"
    assert canaries.make_canaries(16, 16, seed=1)[1] == "gaussian"
    other, _ = canaries.make_canaries(96, 128, seed=2)
    assert not np.allclose(x, other)
    # given a direction to avoid (the real records' mean), the canaries are nearly orthogonal
    # to it, and still to each other
    v = np.random.default_rng(3).normal(size=128)
    chosen, _ = canaries.make_canaries(32, 128, seed=1, avoid=v)
    proj = np.abs((squash(chosen, 2.0) - 0.5) @ v)
    assert proj.max() < 0.6 * np.median(np.abs(s @ v))  # the best quarter of 127 rows
    c = squash(chosen, 2.0).astype(np.float64) - 0.5
    np.testing.assert_allclose(c @ c.T, gram[0, 0] * np.eye(32), atol=1e-4)


def test_canaries_go_into_training_data_only_and_label_is_the_rarest():
    rng = np.random.default_rng(0)
    a = ClientData(0, rng.normal(size=(6, 4)), np.array([0, 0, 1, 1, 2, 2]), *[None] * 4)
    b = ClientData(1, rng.normal(size=(5, 4)), np.array([0, 1, 1, 2, 2]), *[None] * 4)
    # class 3 is absent at both; among classes absent at client 1, 3 is the federation's rarest
    assert canaries.canary_label([a, b], 1, 4) == 3
    assert canaries.canary_label([a, b], 1, 3) == 0
    x = np.ones((3, 4))
    c = canaries.with_canaries(a, x, 3)
    assert c.n_train == 9 and c.y_train[-3:].tolist() == [3, 3, 3]
    np.testing.assert_array_equal(c.x_train[:6], a.x_train)
    assert c.x_val is None and c.id == 0


def test_check_bounds_fails_loudly_above_the_spent_epsilon():
    attacks = {"decoder_client": {"eps_lb": 1.2}, "synthetic_dcr": {"eps_lb": 0.0}}
    ok = {"dp_enabled": True, "target_client": 3, "attacks": attacks}
    audit_run.check_bounds({**ok, "epsilon_spent": 1.5, "epsilon_reported": 1.3})
    with pytest.raises(audit_run.PrivacyViolation, match="decoder_client.*1.2.*reported.*1.1"):
        audit_run.check_bounds({**ok, "epsilon_spent": 1.5, "epsilon_reported": 1.1})
    with pytest.raises(audit_run.PrivacyViolation, match="spent"):
        audit_run.check_bounds({**ok, "epsilon_spent": 1.0, "epsilon_reported": None})
    audit_run.check_bounds({**ok, "dp_enabled": False, "epsilon_spent": None})


# --- end to end ------------------------------------------------------------------------------


def test_without_dp_the_attacks_find_the_canaries(db, tmp_path, capsys):
    run = finished_run(db, tmp_path / "run", "dpcvae", "--disable_dp")
    before = read_metrics(run)
    assert cli.main([str(run), "--n_canaries", str(K), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "DP OFF" in out and "decoder_client" in out
    m = read_metrics(run)  # validated schema; the run's own results are untouched
    assert {k: v for k, v in m.items() if k != "audit"} == before
    a = m["audit"]
    assert a["n_canaries"] == a["n_nonmembers"] == K and a["canary"]["design"] == "hadamard"
    assert a["dp_enabled"] is False and a["epsilon_spent"] is None
    client, dcr = a["attacks"]["decoder_client"], a["attacks"]["synthetic_dcr"]
    # the client's own decoder separates members almost perfectly
    assert client["auc"] > 0.95 and client["tpr_at_fpr_0.1"] > 0.8
    assert client["eps_lb"] > 1.0 and client["eps_lb"] <= client["eps_lb_ceiling"]
    # its synthetic data leak too, less sharply (the global decoder averages two clients)
    assert dcr["auc"] > 0.8 and dcr["eps_lb"] > 0.0
    assert a["eps_lb_max"] == max(x["eps_lb"] for x in a["attacks"].values())
    # an audit is not replaced silently
    assert cli.main([str(run), "--n_canaries", str(K), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dpcvae", "dpcgan"])
def test_with_dp_the_bound_stays_below_the_spent_epsilon(db, tmp_path, capsys, method):
    extra = [] if method == "dpcvae" else ["--n_fedavg_rounds", "2", "--local_epochs_gen", "2"]
    run = finished_run(db, tmp_path / "run", method, *extra)
    assert cli.main([str(run), "--n_canaries", str(K), "--quiet"]) == 0
    assert "spent epsilon: OK" in capsys.readouterr().out
    a = read_metrics(run)["audit"]
    reported = read_metrics(run)["privacy"]["clients"][a["target_client"]]["epsilon"]
    assert a["dp_enabled"] and a["epsilon_reported"] == reported
    assert 0 < a["epsilon_spent"] <= 1.0 + 1e-9
    for attack in a["attacks"].values():
        assert 0.0 <= attack["eps_lb"] <= min(a["epsilon_spent"], reported)
    assert a["attacks"]["decoder_client"]["auc"] < 0.75


def test_a_violation_exits_1_and_writes_nothing(db, tmp_path, capsys, monkeypatch):
    run = finished_run(db, tmp_path / "run", "dpcvae", "--n_fedavg_rounds", "1")
    before = (run / "metrics.json").read_bytes()
    real = audit_run.run_audit

    def bigger_than_spent(setup, cfg):
        result = real(setup, cfg)
        result["attacks"]["synthetic_dcr"]["eps_lb"] = result["epsilon_spent"] + 0.5
        return result

    monkeypatch.setattr(cli, "run_audit", bigger_than_spent)
    assert cli.main([str(run), "--n_canaries", "8", "--quiet"]) == 1
    assert "BUG" in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == before


def test_bad_input_exits_2_and_names_it(db, tmp_path, capsys):
    local = tmp_path / "local"
    args = ["--database_root", str(db), "--results_dir", str(local), "--method", "local"]
    assert main_module.main([*args, "--n_clients", "2", "--quiet"]) == 0
    assert cli.main([str(local)]) == 2
    assert "'local' has nothing to audit" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert cli.main([str(tmp_path / "unfinished")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line, status 2
        cli.main([str(local), "--n_canaries", "x"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    run = finished_run(db, tmp_path / "run", "dpcvae", "--n_fedavg_rounds", "1")
    for flags, needle in (
        (["--target_client", "7"], "--target_client 7"),
        (["--n_canaries", "0"], "--n_canaries"),
        (["--canary_label", "9"], "--canary_label 9"),
        (["--confidence", "1"], "--confidence"),
    ):
        assert cli.main([str(run), *flags, "--quiet"]) == 2
        assert needle in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert "audit" not in read_metrics(run) and config["method"] == "dpcvae"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n_canaries", "0"], "--n_canaries must be >= 1, got 0"),
        (["--n_latent", "0"], "--n_latent must be >= 1, got 0"),
        (["--confidence", "1"], r"--confidence must lie in \(0, 1\), got 1.0"),
    ],
)
def test_a_bad_audit_flag_is_one_error_naming_it(tmp_path, capsys, flags, message):
    """The audit's flags are AuditConfig's field records: parsed into it, checked by it."""
    assert cli.main([str(tmp_path / "no-run"), *flags, "--quiet"]) == 2
    assert re.search(f"^error: {message}$", capsys.readouterr().err, re.M)


def test_audit_flags_reach_the_config():
    args = cli.build_parser().parse_args(["run", "--target_client", "3", "--confidence", "0.9"])
    cfg = config_from_args(audit_run.AuditConfig, args, sections=[None])
    assert cfg == audit_run.AuditConfig(target_client=3, confidence=0.9)
