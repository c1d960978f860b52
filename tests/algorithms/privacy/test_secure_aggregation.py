"""Noise shares under secure aggregation in simulation (issue 31): the plan, the encoding's
sensitivity, the shares' variance, the two guarantees, the runs of dpfedpft, dpcvae and dpfedavg
with --secure_aggregation, the refusals, and the run keys of existing configurations."""

import json
import math

import pytest
import torch
from helpers.databases import make_gaussian_db
from helpers.tiny import FAST, TINY

import main as main_module
from algorithms.options import load_settings
from algorithms.privacy import secure_aggregation as sa
from algorithms.privacy.skellam import (
    from_modular,
    gaussian_rdp,
    modular_sum,
    padded_dim,
    skellam_epsilon,
    to_modular,
)
from algorithms.run_files import DataFacts, describe_run
from utils.results import config_key


def plan(m: int = 4, n_sites: int = 4, dims=(3000,), epsilon=1.0, steps=1, extra=None):
    return sa.plan_secure_sum(
        dims=dims,
        sensitivity=math.sqrt(3),
        n_sites=n_sites,
        min_honest=m,
        epsilon=epsilon,
        delta=1e-4,
        steps=steps,
        seed=11,
        extra=extra,
    )


def test_the_plan_meets_the_target_and_its_sums_cannot_wrap():
    p = plan()
    g = p.guarantees(1e-4)
    assert g.epsilon == pytest.approx(1.0, abs=1e-6) and g.epsilon <= 1.0 + 1e-9
    # the worst case: every site at its norm cap plus the noise's tail fits in the modulus
    d = padded_dim(p.dims[0])

    def bits(gamma: float) -> int:
        norm = sa.UNITS_PER_SITE * p.sensitivity / gamma + math.sqrt(d)
        variance = p.share_variance * (gamma / p.gamma) ** -2
        return sa.bits_needed(p.n_sites, norm, variance, d, sa.WRAP_FAILURE)

    assert bits(p.gamma) <= sa.BITS
    assert bits(p.gamma / 2) > sa.BITS  # the finest grid that fits: half of it would wrap


def test_the_count_release_is_composed_in_the_plan():
    alone, with_count = plan(steps=40), plan(steps=40, extra=gaussian_rdp(20.0))
    assert with_count.variance > alone.variance  # the count spends part of the budget
    assert with_count.guarantees(1e-4, gaussian_rdp(20.0)).epsilon == pytest.approx(1.0, abs=1e-6)


def test_m_honest_and_collusion_epsilons():
    one, four = plan(m=1), plan(m=4)
    assert one.guarantees(1e-4).epsilon_collusion == one.guarantees(1e-4).epsilon
    g = four.guarantees(1e-4)
    l1, l2 = four.l1, four.l2
    assert g.epsilon_collusion == pytest.approx(skellam_epsilon(four.variance / 4, l1, l2, 1, 1e-4))
    assert g.epsilon_collusion > 2 * g.epsilon


def test_coupled_rounding_moves_by_at_most_the_sensitivity_plus_sqrt_d():
    d = 512
    for seed in range(20):
        x = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 50
        delta = torch.randn(d, dtype=torch.float64) * 3
        a = sa.randomized_round(x, torch.Generator().manual_seed(seed))
        b = sa.randomized_round(x + delta, torch.Generator().manual_seed(seed))
        moved = float(torch.linalg.vector_norm((b - a).double()))
        assert moved <= float(torch.linalg.vector_norm(delta)) + math.sqrt(d)


def test_the_decoded_sum_is_the_sum_of_the_sites_vectors_plus_the_noise():
    p = plan(m=4, n_sites=4, dims=(3000,))
    xs = [torch.randn(3000, dtype=torch.float64) * 5 for _ in range(4)]
    seed = sa.rotation_seed(p, 0, 0)
    # without noise the decoded sum is within the grid's rounding of the true sum
    grids = [to_modular(sa._grid(x, p, seed, torch.Generator().manual_seed(i)), p.bits)
             for i, x in enumerate(xs)]  # fmt: skip
    exact = sa.decode_sum(modular_sum(grids, p.bits), p, seed)
    err = float(torch.linalg.vector_norm(exact - sum(xs)))
    assert err <= 4 * p.gamma * math.sqrt(padded_dim(3000))
    # with the shares: the error is the noise, of std gamma sqrt(total variance) per coordinate
    res = [sa.encode_share(x, p, seed, torch.Generator().manual_seed(10 + i))
           for i, x in enumerate(xs)]  # fmt: skip
    noise = sa.decode_sum(sa.sum_shares(res, p), p, seed) - sum(xs)
    expected = p.gamma * math.sqrt(4 * (p.share_variance + 0.25))
    assert float(noise.std()) == pytest.approx(expected, rel=0.06)


def test_m_shares_carry_the_whole_variance():
    p = plan(m=5, n_sites=5)
    shares = [sa.skellam_share(20000, p.share_variance, 1, torch.Generator().manual_seed(i))
              for i in range(5)]  # fmt: skip
    total = sum(s.double() for s in shares)
    assert float(total.var()) == pytest.approx(p.variance, rel=0.05)


def test_a_sum_of_fewer_than_m_sites_is_refused_and_m_above_the_sites_too():
    p = plan(m=3, n_sites=4)
    res = [sa.encode_share(torch.zeros(3000), p, 1, torch.Generator().manual_seed(i))
           for i in range(2)]  # fmt: skip
    with pytest.raises(ValueError, match="at least 3"):
        sa.sum_shares(res, p)
    with pytest.raises(ValueError, match="min_honest_sites 5"):
        plan(m=5, n_sites=4)


def test_residues_from_modular_round_trip():
    z = torch.tensor([-5, 0, 7, -(2**28)], dtype=torch.int64)
    assert torch.equal(from_modular(to_modular(z, 30), 30), z)


# --- runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_gaussian_db(tmp_path_factory.mktemp("secure") / "db", n_per_file=(300,))


def run(db, tmp_path, method, *extra):
    out = tmp_path / "run"
    argv = ["--database_root", str(db), "--results_dir", str(out), *FAST, "--method", method]
    assert main_module.main([*argv, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


SECURE_CVAE = [*TINY["dpcvae"], "--gen_batch_size", "0", "--local_epochs_gen", "1"]


@pytest.mark.parametrize(
    "method, flags",
    [("dpfedpft", []), ("dpcvae", SECURE_CVAE),
     ("dpfedavg", [*TINY["dpfedavg"], "--bz", "100000", "--local_steps", "1"])],
)  # fmt: skip
def test_a_secure_run_reports_both_epsilons(db, tmp_path, method, flags):
    m = run(db, tmp_path, method, *flags, "--secure_aggregation", "--min_honest_sites", "3")
    privacy = m["privacy"]
    assert privacy["accountant"] == "skellam-rdp"
    for line in privacy["clients"]:
        assert line["min_honest_sites"] == 3
        assert line["epsilon"] == pytest.approx(1.0, abs=1e-6)
        assert line["epsilon_collusion"] > line["epsilon"]
    block = privacy["secure_aggregation"]
    assert block["min_honest_sites"] == 3
    assert block["epsilon_collusion_max"] == max(c["epsilon_collusion"] for c in privacy["clients"])
    assert any("secure aggregation" in item for item in privacy["not_covered"])


def test_with_one_honest_site_both_epsilons_are_one(db, tmp_path):
    m = run(db, tmp_path, "dpfedpft", "--secure_aggregation")
    for line in m["privacy"]["clients"]:
        assert line["epsilon_collusion"] == line["epsilon"] == pytest.approx(1.0, abs=1e-6)


def test_the_secure_simulation_is_deterministic_for_a_seed(db, tmp_path):
    flags = [*SECURE_CVAE, "--secure_aggregation", "--min_honest_sites", "3"]
    a = run(db, tmp_path / "a", "dpcvae", *flags)
    b = run(db, tmp_path / "b", "dpcvae", *flags)
    assert a["summary"] == b["summary"]


@pytest.mark.parametrize(
    "flags, needle",
    [(["--method", "dpcvae", "--secure_aggregation"], "one full-batch DP step per round"),
     (["--method", "dpcvae", "--min_honest_sites", "2"], "needs --secure_aggregation"),
     (["--method", "dpcgan", "--secure_aggregation"], "dpcgan has no secure round"),
     (["--method", "dpfedavg", "--secure_aggregation"], "one full-batch DP step per round"),
     (["--method", "dpfedpft", "--secure_aggregation", "--dp", "off"], "needs DP on")],
)  # fmt: skip
def test_what_secure_aggregation_cannot_do_is_one_line(flags, needle):
    with pytest.raises(ValueError, match=needle):
        load_settings(["--database_root", "db", *flags])


def test_more_honest_sites_than_clients_is_one_line(db, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--database_root", str(db), "--results_dir", str(out), *FAST, "--method", "dpfedpft"]
    assert main_module.main([*argv, "--secure_aggregation", "--min_honest_sites", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: --min_honest_sites 4: the split has 3 clients (every sum holds at most "\
        "that many sites)" and not out.exists()  # fmt: skip


# Run keys computed at 07a5985, before --secure_aggregation existed: its defaults keep them.
KEYS = {
    "dpcvae": "5b0af9304e",
    "dpcvae --preset dp": "25b757d56b",
    "dpfedpft": "c34bb50849",
    "dpfedavg": "e8ea059d44",
    "dpfedavg --dp off": "aabca62bce",
}


def test_the_new_flags_at_their_defaults_keep_every_run_key():
    facts = DataFacts("gauss", "none", "f" * 64, "split.json", "s" * 64, {})
    for name, key in KEYS.items():
        settings = load_settings(["--database_root", "db", "--method", *name.split()])
        assert config_key(describe_run(settings, facts)[0]) == key, name
    secure = load_settings(["--database_root", "db", "--method", "dpfedpft",
                            "--secure_aggregation"])  # fmt: skip
    assert config_key(describe_run(secure, facts)[0]) != KEYS["dpfedpft"]
