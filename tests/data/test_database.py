"""The database loader: validated arrays, or an error naming the file and the problem."""

import re

import numpy as np
import pytest

from data.database import (
    DatabaseError,
    load_database,
    load_embedding_file,
    save_embedding_file,
    write_meta,
)


def good(n=5, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % k


def make_db(root, files, classes=("a", "b", "c"), **meta):
    for name, (x, y) in files.items():
        save_embedding_file(root / f"{name}.npz", x, y)
    write_meta(root, {"classes": list(classes), "files": {n: {} for n in files}, **meta})
    return root


def raises(path, message):
    """pytest.raises for a DatabaseError whose message names `path` and matches `message`."""
    return pytest.raises(DatabaseError, match=re.escape(str(path)) + ".*" + message)


def test_round_trip_with_metadata(tmp_path):
    x, y = good()
    meta = np.stack([np.arange(5), 10 + np.arange(5)], axis=1)
    save_embedding_file(tmp_path / "f.npz", x, y, meta, ("row", "center"))
    f = load_embedding_file(tmp_path / "f.npz", n_classes=3)
    assert f.name == "f" and len(f) == 5
    np.testing.assert_array_equal(f.embeddings, x)
    np.testing.assert_array_equal(f.labels, y)
    assert f.embeddings.dtype == np.float32 and f.labels.dtype == np.int64
    np.testing.assert_array_equal(f.metadata, meta)
    assert f.metadata_fields == ("row", "center")


def test_missing_file_and_unreadable_file(tmp_path):
    with raises(tmp_path / "nope.npz", "file not found"):
        load_embedding_file(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with raises(tmp_path / "junk.npz", "not a readable .npz file"):
        load_embedding_file(tmp_path / "junk.npz")


def test_missing_key(tmp_path):
    x, _ = good()
    np.savez(tmp_path / "f.npz", embeddings=x)
    with raises(tmp_path / "f.npz", r"missing key\(s\) \['labels'\]"):
        load_embedding_file(tmp_path / "f.npz")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"embeddings": np.ones((5, 4), np.int32)}, "'embeddings' must be floating point"),
        ({"labels": np.ones(5, np.float32)}, "'labels' must be integers"),
        ({"embeddings": np.ones(5, np.float32)}, r"'embeddings' must be 2-D .* shape \(5,\)"),
        ({"labels": np.ones((5, 1), np.int64)}, r"'labels' must be 1-D, got shape \(5, 1\)"),
        ({"labels": np.zeros(4, np.int64)}, "5 embeddings but 4 labels"),
        (
            {"embeddings": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)},
            "the file holds no samples",
        ),
        ({"embeddings": np.zeros((5, 0), np.float32)}, "embeddings have dimension 0"),
        ({"metadata": np.zeros((4, 2), np.int64)}, r"'metadata' must be N x K with N=5"),
        (
            {"metadata": np.zeros((5, 2), np.int64), "metadata_fields": np.array(["a"])},
            "'metadata_fields' names 1 columns, metadata has 2",
        ),
    ],
)
def test_wrong_dtype_or_shape(tmp_path, arrays, message):
    x, y = good()
    np.savez(tmp_path / "f.npz", **{"embeddings": x, "labels": y, **arrays})
    with raises(tmp_path / "f.npz", message):
        load_embedding_file(tmp_path / "f.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(tmp_path, bad):
    x, y = good()
    x[3, 1] = bad
    save_embedding_file(tmp_path / "f.npz", x, y)
    with raises(tmp_path / "f.npz", r"1 embedding row\(s\) hold NaN or Inf \(first: row 3\)"):
        load_embedding_file(tmp_path / "f.npz")


def test_labels_out_of_range(tmp_path):
    x, y = good()
    y[2] = -1
    save_embedding_file(tmp_path / "neg.npz", x, y)
    with raises(tmp_path / "neg.npz", r"labels must lie in \[0\], found min -1"):
        load_embedding_file(tmp_path / "neg.npz")
    x, y = good()
    y[0] = 3
    make_db(tmp_path, {"all": (x, y)})
    with raises(tmp_path / "all.npz", r"labels must lie in \[0, 2\], found min 0 and max 3"):
        load_database(tmp_path)


def test_database_checks_files_against_each_other_and_meta(tmp_path):
    a = make_db(tmp_path / "a", {"train": good(d=4), "test": good(d=4)}, embedding_dim=4)
    database = load_database(a)
    assert [f.name for f in database.files] == ["train", "test"] and database.dim == 4
    assert database.classes == ["a", "b", "c"] and database.n_classes == 3
    x, y, source = database.pooled()
    assert x.shape == (10, 4) and list(source) == [0] * 5 + [1] * 5

    b = make_db(tmp_path / "b", {"client_0": good(d=4), "client_1": good(d=6)})
    with pytest.raises(DatabaseError, match=r"dimensions differ between files: .*client_1': 6"):
        load_database(b)
    c = make_db(tmp_path / "c", {"all": good(d=4)}, embedding_dim=8)
    with pytest.raises(DatabaseError, match="meta.json says embedding_dim 8, files hold 4"):
        load_database(c)


def test_meta_json_errors(tmp_path):
    with pytest.raises(DatabaseError, match="database folder not found"):
        load_database(tmp_path / "missing")
    with raises(tmp_path / "meta.json", "file not found"):
        load_database(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DatabaseError, match="not valid JSON"):
        load_database(tmp_path)
    write_meta(tmp_path, {"classes": ["a", "b"]})
    with raises(tmp_path / "meta.json", "missing key 'files'"):
        load_database(tmp_path)
    write_meta(tmp_path, {"classes": ["a"], "files": {"all": {}}})
    with raises(tmp_path / "meta.json", "'classes' must list at least two"):
        load_database(tmp_path)
    write_meta(tmp_path, {"classes": ["a", "b"], "files": {"all": {}}})
    with raises(tmp_path / "all.npz", "file not found"):
        load_database(tmp_path)
