"""The metrics.json schema, run directories and the collected table."""

import copy
from collections import defaultdict

import numpy as np
import pytest

from algorithms.methods import registry
from utils.collect import collect
from utils.collect import main as collect_main
from utils.io import write_json
from utils.results import (
    ResultsError,
    default_run_dir,
    prepare_run_dir,
    validate_metrics,
    write_metrics,
)
from utils.table import to_markdown

NAMES = ("acc", "balanced_acc", "f1_macro", "f1_weighted")


def fake_metrics(method="fedavg", seed=1, accs=(0.5, 0.7), key="k1"):
    clients = [
        {"id": i, "n_train": 10, "n_val": 2, "n_test": 4, **{f"test_{n}": a for n in NAMES}}
        for i, a in enumerate(accs)
    ]
    summary = {f"test_{n}_{s}": 0.0 for n in NAMES for s in ("mean", "std", "weighted")}
    return {
        "method": method,
        # as the run lifecycle writes it, from the method registry
        "private": registry.get(method).private,
        "dataset": "d",
        "backbone": "b",
        "seed": seed,
        "config_key": key,
        "split": {"n_clients": len(accs)},
        "clients": clients,
        "summary": summary,
        "lambda": None,
        "privacy": None,
        "cost": {"wall_seconds": 1.0, "params_shared": 10, "bytes_per_round": 40},
    }


def test_valid_metrics_pass_and_each_broken_key_is_named():
    m = fake_metrics()
    validate_metrics(m)
    for path, bad, message in [
        (("method",), None, "'method'"),
        (("clients", 0, "test_acc"), 1.5, "test_acc"),
        (("clients", 0, "n_test"), "4", "n_test"),
        (("summary", "test_f1_macro_std"), None, "test_f1_macro_std"),
        (("cost", "bytes_per_round"), "x", "bytes_per_round"),
        (("lambda",), "0.3", "lambda"),
    ]:
        broken = copy.deepcopy(m)
        target = broken
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = bad
        with pytest.raises(ResultsError, match=message):
            validate_metrics(broken)


def test_run_dir_is_derived_from_config_without_timestamps(tmp_path):
    a = default_run_dir(
        root=tmp_path,
        dataset="d",
        backbone="vit/b",
        method="fedavg",
        config={"x": 1, "seed": 5},
        seed=5,
    )
    b = default_run_dir(
        root=tmp_path,
        dataset="d",
        backbone="vit/b",
        method="fedavg",
        config={"x": 1, "seed": 6},
        seed=5,
    )
    c = default_run_dir(
        root=tmp_path, dataset="d", backbone="vit/b", method="fedavg", config={"x": 2}, seed=5
    )
    assert a == b and a != c and a.name == "seed_5" and "vit_b" in str(a)


def test_finished_run_is_refused_without_overwrite(tmp_path):
    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    write_metrics(run, fake_metrics())
    with pytest.raises(ResultsError, match="finished run.*; pass --overwrite"):
        prepare_run_dir(run, overwrite=False, remedy="pass --overwrite")
    prepare_run_dir(run, overwrite=True)
    assert not (run / "metrics.json").exists()


def test_collect_averages_seeds_per_client_then_across_clients(tmp_path):
    # client 0: 0.4 and 0.6 over two seeds (mean 0.5); client 1: 0.8 and 1.0 (mean 0.9)
    write_json(tmp_path / "a/seed_1/metrics.json", fake_metrics(seed=1, accs=(0.4, 0.8)))
    write_json(tmp_path / "a/seed_2/metrics.json", fake_metrics(seed=2, accs=(0.6, 1.0)))
    write_json(tmp_path / "b/seed_1/metrics.json", fake_metrics("local", 1, (0.1, 0.3), key="k2"))
    rows = collect([tmp_path], order=registry.NAMES)
    assert [r["method"] for r in rows] == ["local", "fedavg"]
    # without an order the methods are in name order
    assert [r["method"] for r in collect([tmp_path])] == ["fedavg", "local"]
    fed = rows[1]
    assert fed["seeds"] == 2
    assert fed["acc_mean"] == pytest.approx(0.7)
    assert fed["acc_std"] == pytest.approx(0.2)
    md = to_markdown(rows)
    assert "| fedavg | 70.00 ± 20.00 |" in md
    assert md.count("\n") == 3


def test_collect_cli_writes_files_and_refuses_empty_input(tmp_path, capsys):
    write_json(tmp_path / "r/seed_1/metrics.json", fake_metrics())
    assert collect_main([str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/table.md").exists() and (tmp_path / "out/table.csv").exists()
    assert collect_main([str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    write_json(tmp_path / "bad/seed_1/metrics.json", {"method": "x"})
    assert collect_main([str(tmp_path / "bad")]) == 2
    assert "metrics.json" in capsys.readouterr().err


def _mixed(seed, key, lam_acc, lam_bal, syn_acc, at_chance, preset="paper", eps=1.0):
    m = fake_metrics("dpcvae", seed, (0.5, 0.5), key=key)
    bal_rows = [{**c, "test_balanced_acc": 0.9} for c in m["clients"]]
    m["lambda"] = lam_acc
    m["lambda_protocol"] = {
        "accuracy": {"lambda": lam_acc, "clients": m["clients"]},
        "balanced_accuracy": {"lambda": lam_bal, "clients": bal_rows},
    }
    m["fidelity"] = {
        "wasserstein_mean": 1.0,
        "synthetic_acc_mean": 0.5,
        "global_synthetic": {"acc": syn_acc, "at_chance": at_chance},
        # a run before "majority" had its own name: true when only the clients' heads were at
        # their majority-class rate; the table reads the global model's test against 1/C
        "synthetic_at_chance": True,
    }
    config = {"generative": {"preset": preset, "n_rounds": 50 if preset == "paper" else 40}}
    return m, {**config, "dp": {"enabled": True, "epsilon": eps}}


def test_collect_shows_synthetic_accuracy_marks_chance_and_reads_either_lambda(tmp_path):
    for seed in (1, 2):
        m, config = _mixed(seed, "k1", 1.0, 0.2, 0.1 * seed, at_chance=seed == 1)
        write_json(tmp_path / f"paper/seed_{seed}/metrics.json", m)
        write_json(tmp_path / f"paper/seed_{seed}/config.json", config)
    m, config = _mixed(1, "k2", 0.5, 0.0, 0.8, False, preset="dp")
    write_json(tmp_path / "dp/seed_1/metrics.json", m)
    write_json(tmp_path / "dp/seed_1/config.json", config)
    rows = {r["method"]: r for r in collect([tmp_path])}
    # the preset names the variant, not the many settings it changes
    assert set(rows) == {"dpcvae (preset=paper)", "dpcvae (preset=dp)"}
    paper = rows["dpcvae (preset=paper)"]
    assert paper["syn_acc"] == pytest.approx(0.15) and paper["syn_at_chance"] is True
    assert paper["lambda"] == 1.0 and paper["balanced_acc_mean"] == pytest.approx(0.5)
    md = to_markdown(list(rows.values()))
    assert "15.00 (chance)" in md and "80.00 |" in md
    by_bal = {r["method"]: r for r in collect([tmp_path], "balanced_accuracy")}
    assert by_bal["dpcvae (preset=paper)"]["lambda"] == pytest.approx(0.2)
    assert by_bal["dpcvae (preset=paper)"]["balanced_acc_mean"] == pytest.approx(0.9)


def reference_client_stats(ms: list[dict], name: str) -> tuple[float, float]:
    """The hand-written grouping that utils.collect replaced: per client id (first-seen
    order), np.mean over seeds; then numpy's mean and std (ddof 0) across clients."""
    per_client: dict = defaultdict(list)
    for m in ms:
        for c in m["clients"]:
            per_client[c["id"]].append(c[f"test_{name}"])
    means = np.array([np.mean(v) for v in per_client.values()])
    return float(means.mean()), float(means.std())


def test_collect_groups_bit_for_bit_as_the_hand_written_loop(tmp_path):
    rng = np.random.default_rng(23)
    runs: dict[str, list[dict]] = defaultdict(list)
    for key, method, n_seeds in (("k1", "fedavg", 3), ("k2", "local", 5), ("k3", "fedprox", 1)):
        for seed in range(n_seeds):
            m = fake_metrics(method, seed, accs=tuple(rng.random(7)), key=key)
            for c in m["clients"]:  # a different value per metric
                c.update({f"test_{n}": float(rng.random()) for n in NAMES})
            m["clients"] = [m["clients"][i] for i in rng.permutation(7)]  # any client order
            m["cost"]["wall_seconds"] = float(rng.random())
            write_json(tmp_path / f"{key}/seed_{seed}/metrics.json", m)
            runs[method].append(m)
    rows = {r["method"]: r for r in collect([tmp_path])}
    assert rows.keys() == runs.keys()
    for method, ms in runs.items():
        for name in NAMES:
            want = reference_client_stats(ms, name)
            assert (rows[method][f"{name}_mean"], rows[method][f"{name}_std"]) == want
        assert rows[method]["wall_seconds"] == float(
            np.mean([m["cost"]["wall_seconds"] for m in ms])
        )
