"""Client partitions: invariants, determinism, dropping, the CLI."""

import json

import numpy as np
import pytest

from data.clients import client_datasets
from data.database import load_database
from data.partition import load_or_make_split, main, make_split, split_database
from data.split_config import SplitConfig, SplitError


def _labels(n=1000, n_classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, n_classes, size=n)


def _all_indices(split):
    return [i for c in split["clients"] for part in ("train", "val", "test") for i in c[part]]


@pytest.mark.parametrize("method", ["iid", "by_labels_split", "pathological_split"])
def test_every_index_used_at_most_once(method):
    y = _labels()
    split = make_split(
        labels=y,
        sources=np.zeros_like(y),
        n_classes=10,
        cfg=SplitConfig(split_method=method, n_clients=7),
    )
    idx = _all_indices(split)
    assert len(idx) == len(set(idx))
    assert all(0 <= i < len(y) for i in idx)


def test_dirichlet_counts_add_up_to_the_dataset():
    y = _labels(2000)
    split = make_split(
        labels=y, sources=np.zeros_like(y), n_classes=10, cfg=SplitConfig(n_clients=10, alpha=0.3)
    )
    kept = {c["id"] for c in split["clients"]}
    total = np.zeros(10, dtype=int)
    for c in split["class_counts"]:
        total += np.sum([c["train"], c["val"], c["test"]], axis=0)
    lost = sum(1 for d in split["dropped"])
    if lost == 0:
        np.testing.assert_array_equal(total, np.bincount(y, minlength=10))
    assert len(kept) + lost == 10
    # class counts agree with the index lists
    for c, counts in zip(split["clients"], split["class_counts"]):
        np.testing.assert_array_equal(np.bincount(y[c["train"]], minlength=10), counts["train"])


def test_small_alpha_is_more_skewed_than_large_alpha():
    y = _labels(5000)

    def skew(alpha):
        split = make_split(
            labels=y,
            sources=np.zeros_like(y),
            n_classes=10,
            cfg=SplitConfig(n_clients=10, alpha=alpha),
        )
        fracs = [max(c["train"]) / max(sum(c["train"]), 1) for c in split["class_counts"]]
        return np.mean(fracs)

    assert skew(0.1) > skew(100.0) + 0.2


@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_pathological_clients_hold_at_most_n_shards_classes(n_shards):
    y = _labels(1500)
    cfg = SplitConfig(split_method="pathological_split", n_clients=8, n_shards=n_shards)
    split = make_split(labels=y, sources=np.zeros_like(y), n_classes=10, cfg=cfg)
    for c in split["clients"]:
        classes = set(y[c["train"] + c["val"] + c["test"]].tolist())
        assert 1 <= len(classes) <= n_shards


def test_same_arguments_give_the_same_split_and_other_seeds_differ():
    y = _labels()
    a = make_split(labels=y, sources=np.zeros_like(y), n_classes=10, cfg=SplitConfig(seed=1))
    b = make_split(labels=y, sources=np.zeros_like(y), n_classes=10, cfg=SplitConfig(seed=1))
    c = make_split(labels=y, sources=np.zeros_like(y), n_classes=10, cfg=SplitConfig(seed=2))
    assert json.dumps(a) == json.dumps(b)
    assert a["clients"] != c["clients"]


def test_per_client_splits_are_stratified_fractions():
    y = np.repeat(np.arange(4), 100)
    split = make_split(
        labels=y,
        sources=np.zeros_like(y),
        n_classes=4,
        cfg=SplitConfig(split_method="iid", n_clients=2),
    )
    for c in split["class_counts"]:
        n = np.sum([c["train"], c["val"], c["test"]], axis=0)
        # 20% of each class to test, then 20% of the rest to validation (rounded per class)
        np.testing.assert_array_equal(c["test"], np.floor(0.2 * n + 0.5))
        np.testing.assert_array_equal(c["val"], np.floor(0.2 * (n - np.array(c["test"])) + 0.5))


def test_natural_split_is_one_client_per_file_and_s_frac_counts(tmp_path):
    from helpers.databases import make_gaussian_db

    db = load_database(make_gaussian_db(tmp_path / "db", n_per_file=(100, 80, 60)))
    split = split_database(db, SplitConfig(split_method="natural"))
    _, _, sources = db.pooled()
    assert [c["name"] for c in split["clients"]] == ["client_0", "client_1", "client_2"]
    for k, c in enumerate(split["clients"]):
        assert set(sources[c["train"] + c["val"] + c["test"]].tolist()) == {k}
    half = split_database(db, SplitConfig(split_method="natural", s_frac=0.5))
    assert [len(_all_indices({"clients": [c]})) for c in half["clients"]] == [50, 40, 30]
    fixed = split_database(db, SplitConfig(split_method="natural", s_frac=90))
    assert [len(_all_indices({"clients": [c]})) for c in fixed["clients"]] == [30, 30, 30]


def test_client_with_empty_test_set_is_dropped_with_a_warning():
    # hospital 1 has one sample per class: a 20% test split per class leaves it no test data
    y = np.array([0, 1] * 10 + [0, 1])
    sources = np.array([0] * 20 + [1] * 2)
    with pytest.warns(UserWarning, match="client 1 dropped: empty test set"):
        split = make_split(
            labels=y, sources=sources, n_classes=2, cfg=SplitConfig(split_method="natural")
        )
    assert [c["id"] for c in split["clients"]] == [0]
    assert split["dropped"] == [
        {"id": 1, "name": "1", "reason": "empty test set (2 samples in all)"}
    ]


def test_split_that_leaves_every_client_empty_is_refused():
    y = np.array([0, 1, 0, 1])
    with pytest.warns(UserWarning), pytest.raises(SplitError, match="every client"):
        make_split(
            labels=y,
            sources=np.zeros_like(y),
            n_classes=2,
            cfg=SplitConfig(split_method="iid", n_clients=4),
        )


def test_more_clients_than_samples_is_refused():
    y = np.array([0, 1, 0])
    with pytest.raises(SplitError, match="--n_clients 5"):
        make_split(
            labels=y,
            sources=np.zeros_like(y),
            n_classes=2,
            cfg=SplitConfig(split_method="iid", n_clients=5),
        )


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"alpha": 0.0}, "--alpha"),
        ({"alpha": -1}, "--alpha"),
        ({"n_clients": 0}, "--n_clients"),
        ({"s_frac": 0}, "--s_frac"),
        ({"test_data_frac": 1.0}, "--test_data_frac"),
        ({"val_frac": -0.1}, "--val_frac"),
        ({"split_method": "nope"}, "--split_method"),
    ],
)
def test_bad_arguments_name_their_flag(kwargs, flag):
    with pytest.raises(SplitError, match=flag):
        SplitConfig(**kwargs)


def test_split_file_is_reused_and_checked_against_the_database(gauss_db, tmp_path):
    from helpers.databases import make_gaussian_db

    db = load_database(gauss_db)
    cfg = SplitConfig(n_clients=4)
    split, path = load_or_make_split(db, cfg)
    assert path.exists() and path.parent == gauss_db / "splits"
    again, path2 = load_or_make_split(db, cfg)
    assert path2 == path and again == split
    other = load_database(make_gaussian_db(tmp_path / "other", n_per_file=(600,), seed=5))
    with pytest.raises(SplitError, match="different database"):
        load_or_make_split(other, cfg, path)


def test_client_datasets_follow_the_split_and_standardize_records(gauss_db):
    db = load_database(gauss_db)
    split = split_database(db, SplitConfig(n_clients=3))
    clients = client_datasets(db, split)
    x, y, _ = db.pooled()
    for c, s in zip(clients, split["clients"]):
        np.testing.assert_array_equal(c.y_train, y[s["train"]])
        np.testing.assert_allclose(c.x_test.mean(axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(c.x_test.std(axis=1), 1, atol=1e-4)


def test_cli_writes_the_file_and_prints_class_counts(gauss_db, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["--database_root", str(gauss_db), "--n_clients", "3", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "client" in text and "train" in text and str(out) in text
    split = json.loads(out.read_text())
    assert split["args"]["n_clients"] == 3 and len(split["clients"]) + len(split["dropped"]) == 3


def test_cli_bad_flag_exits_2_without_output(gauss_db, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["--database_root", str(gauss_db), "--alpha", "0", "--output", str(out)]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert not out.exists()
    assert main(["--database_root", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
