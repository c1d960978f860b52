"""Bad input to every command-line tool: exit status 2, one line on stderr naming the file or
flag and what is wrong, and no output written. (Messages of the database loader, the partition
arguments and create_db's own flags are tested in test_database.py, test_partition.py and
test_create_db.py; this file checks the tools end to end and fills the gaps.)"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.databases import make_gaussian_db
from helpers.images import TINY_BACKBONE, make_medmnist
from helpers.tiny import FAST

import data.create_db as create_db
import data.partition as partition
import main as main_module
from data.database import save_embedding_file
from utils.collect import main as collect_main
from utils.io import write_json
from utils.plots import main as plots_main

HEAD = ["--local_epochs", "5"]  # for the methods with heads (a flag a method ignores is refused)


def call(tool, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of a tool's main(), argparse's own exits included."""
    try:
        code = tool([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, needle: str) -> None:
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(needle, err), err


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- databases


def _truncate(db: Path) -> None:
    data = (db / "all.npz").read_bytes()
    (db / "all.npz").write_bytes(data[: len(data) // 2])


def _rewrite(db: Path, **arrays) -> None:
    with np.load(db / "all.npz") as npz:
        content = {k: npz[k] for k in npz.files}
    content.update(arrays)
    np.savez(db / "all.npz", **{k: v for k, v in content.items() if v is not None})


def _with_value(key: str, row: int, value) -> callable:
    def apply(db: Path) -> None:
        with np.load(db / "all.npz") as npz:
            array = npz[key].copy()
        array[row] = value
        _rewrite(db, **{key: array})

    return apply


def _other_dimension(db: Path) -> None:
    rng = np.random.default_rng(0)
    save_embedding_file(db / "client_1.npz", rng.normal(size=(30, 8)), np.arange(30) % 4)


def _list_no_file(db: Path) -> None:
    meta = json.loads((db / "meta.json").read_text())
    (db / "meta.json").write_text(json.dumps({**meta, "files": {}}))


def _escaping_name(db: Path) -> None:
    outside = db.parent / "outside"
    shutil.copytree(db, outside)
    meta = json.loads((db / "meta.json").read_text())
    meta["files"] = {"../outside/all": {}}
    (db / "meta.json").write_text(json.dumps(meta))


# (what is wrong, how to break a 60-sample database, what the one line must say)
DATABASE_DEFECTS = {
    "truncated npz": (_truncate, r"all\.npz: not a readable \.npz file"),
    "missing key": (lambda db: _rewrite(db, labels=None), r"all\.npz: missing key.*'labels'"),
    "wrong dtype": (
        lambda db: _rewrite(db, labels=np.zeros(60, np.float32)),
        r"all\.npz: 'labels' must be integers",
    ),
    "nan": (_with_value("embeddings", 7, np.nan), r"all\.npz: 1 embedding row.*NaN or Inf"),
    "inf": (_with_value("embeddings", 7, -np.inf), r"all\.npz: 1 embedding row.*NaN or Inf"),
    "negative label": (_with_value("labels", 3, -1), r"all\.npz: labels must lie in \[0, 3\]"),
    "label out of range": (_with_value("labels", 3, 4), r"all\.npz: labels must lie in \[0, 3\]"),
    "empty file": (
        lambda db: _rewrite(db, embeddings=np.zeros((0, 4)), labels=np.zeros(0, np.int64)),
        r"all\.npz: the file holds no samples",
    ),
    "no file listed": (_list_no_file, r"meta\.json: 'files' lists no database file"),
    "dims differ": (_other_dimension, r"embedding dimensions differ between files"),
    "meta.json not UTF-8": (
        lambda db: (db / "meta.json").write_bytes(b"\xff\xfe{}"),
        r"meta\.json: not valid JSON \(not UTF-8",
    ),
    "meta.json names a path": (_escaping_name, r"meta\.json: file name '\.\./outside/all'"),
}


@pytest.mark.parametrize("defect", list(DATABASE_DEFECTS))
@pytest.mark.parametrize("tool", ["main.py", "partition.py"])
def test_database_defects_are_refused_before_any_output(tmp_path, capsys, tool, defect):
    names = ["all", "client_1"] if defect == "dims differ" else None
    sizes = (30, 30) if defect == "dims differ" else (60,)
    db = make_gaussian_db(tmp_path / "db", n_per_file=sizes, dim=4, names=names)
    breaks, needle = DATABASE_DEFECTS[defect]
    breaks(db)
    before = files_under(tmp_path)
    if tool == "main.py":
        argv = ["--database_root", db, "--results_dir", tmp_path / "run", "--method", "local"]
        code, err = call(main_module.main, [*argv, *FAST], capsys)
    else:
        argv = ["--database_root", db, "--n_clients", "3", "--output", tmp_path / "split.json"]
        code, err = call(partition.main, argv, capsys)
    assert_refused(code, err, needle)
    assert files_under(tmp_path) == before  # no split file, no run directory


# ----------------------------------------------------------------------------- split files


@pytest.fixture
def split_setup(tmp_path):
    """A 60-sample database and a valid 3-client split file of it."""
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    path = tmp_path / "split.json"
    assert partition.main(["--database_root", str(db), "--n_clients", "3", "--split_method",
                           "iid", "--output", str(path)]) == 0  # fmt: skip
    return db, path, json.loads(path.read_text())


def _edit(change) -> callable:
    """A defect that edits the split's content (the file is rewritten as JSON)."""

    def apply(split: dict) -> dict:
        change(split)
        return split

    return apply


# (what is wrong, the split file's new content from the valid one, what the line must say):
# a dict is written as JSON, a str as it is, None makes the path a folder.
SPLIT_DEFECTS = {
    "not JSON": (lambda split: "{oops", r"split\.json: not valid JSON"),
    "a folder": (lambda split: None, r"split\.json: cannot read"),
    "overlapping rows": (
        _edit(lambda s: s["clients"][1]["train"].append(s["clients"][0]["test"][0])),
        r"client 1 'train' uses a row twice",
    ),
    "non-integer row": (
        _edit(lambda s: s["clients"][0]["train"].append(0.5)),
        r"client 0 'train' must be a list of row indices",
    ),
    "no test rows": (
        _edit(lambda s: s["clients"][2].update(test=[])),
        r"client 2 has no train or no test rows",
    ),
    "row out of range": (
        _edit(lambda s: s["clients"][0]["val"].append(60)),
        r"client 0 'val' indices out of range",
    ),
    "no client": (_edit(lambda s: s.update(clients=[])), r"split\.json: lists no client"),
    "another database": (
        _edit(lambda s: s["database"].update(fingerprint="0" * 64)),
        r"split was made for a different database",
    ),
}


@pytest.mark.parametrize("defect", list(SPLIT_DEFECTS))
def test_bad_split_files_are_refused(tmp_path, capsys, split_setup, defect):
    db, path, split = split_setup
    breaks, needle = SPLIT_DEFECTS[defect]
    content = breaks(split)
    path.unlink()
    if content is None:
        path.mkdir()
    elif isinstance(content, str):
        path.write_text(content)
    else:
        write_json(path, content)
    argv = ["--database_root", db, "--split_file", path, "--results_dir", tmp_path / "run"]
    argv += ["--method", "local", "--split_method", "iid", *FAST]
    code, err = call(main_module.main, argv, capsys)
    assert_refused(code, err, needle)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- main.py flags


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--method", "nope"], r"argument --method: invalid choice: 'nope'"),
        (["--method", "local", "--seed", "-1"], r"--seed must be >= 0"),
        (["--method", "local", "--split_seed", "-1"], r"--split_seed must be >= 0"),
        (["--method", "local", "--n_clients", "61"], r"--n_clients 61 is more than the 60"),
        (["--method", "local", "--alpha", "-0.5"], r"--alpha must be > 0"),
        (["--method", "dpcvae", "--epsilon", "-1"], r"--epsilon must be a positive number"),
        (["--method", "dpcvae", "--epsilon", "inf"], r"--epsilon must be a positive number"),
        (["--method", "dpcvae", "--delta", "0"], r"--delta must lie in \(0, 1\)"),
        (["--method", "dpcvae", "--delta", "-0.1"], r"--delta must lie in \(0, 1\)"),
        (["--method", "dpcgan", "--delta", "1.5"], r"--delta must lie in \(0, 1\)"),
        (["--method", "local", "--resume", "--overwrite"], r"exclude each other"),
        (["--method", "dpcvae", "--resume", "--secure_noise"], r"--resume does not apply"),
        (["--method", "dpcvae", "--count_noise", "-1"], r"--count_noise must be >= 0"),
        (["--method", "dpcvae", "--count_noise", "1"], r"--count_noise 1.0 alone spends epsilon"),
        (["--method", "fedavg", "--secure_noise"], r"--secure_noise does not apply"),
        (["--method", "dpcvae", "--checkpoint_interval", "-1"], r"--checkpoint_interval must be"),
        (["--method", "dpcvae", "--checkpoint_interval", "nan"], r"--checkpoint_interval must be"),
        (["--method", "local", "--n_clients", "8", "--split_method", "iid", "--s_frac", "16"],
         r"leaves every client without train or test data"),  # 2 samples per client
    ],
)  # fmt: skip
def test_bad_main_flags_are_refused_before_any_output(tmp_path, capsys, flags, needle):
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    before = files_under(tmp_path)
    argv = ["--database_root", db, "--results_dir", tmp_path / "run", *FAST, *flags]
    code, err = call(main_module.main, argv, capsys)
    assert_refused(code, err, needle)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_results_dir_that_cannot_be_a_folder_is_refused(tmp_path, capsys, where):
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "run"
    argv = ["--database_root", db, "--results_dir", out, "--method", "local", *FAST]
    code, err = call(main_module.main, argv, capsys)
    assert_refused(code, err, r"--results_dir .*taken")


TINY_GEN = ["--n_fedavg_rounds", "1", "--local_epochs_gen", "1", "--gen_batch_size", "256"]
TINY_GEN += ["--hidden_dim", "8", "--latent_dim", "2"]


def test_delta_not_below_one_over_n_warns_and_runs(tmp_path, capsys):
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    argv = ["--database_root", db, "--results_dir", tmp_path / "run", "--method", "dpcvae"]
    argv += [*FAST, *HEAD, *TINY_GEN, "--delta", "0.2"]
    code, err = call(main_module.main, argv, capsys)
    assert code == 0
    assert "warning: --delta 0.2 is not below 1/n for clients [" in err


def test_a_class_with_a_single_sample_works(tmp_path, capsys):
    """Decision: a class with one sample is kept, not refused. The per-class held-out share rounds
    half up (0.2 x 1 -> 0), so the sample stays in its client's training set."""
    rng = np.random.default_rng(0)
    y = np.r_[np.arange(59) % 3, 3]  # class 3: one sample
    x = rng.normal(size=(60, 4)) + 3 * np.eye(4)[y]
    save_embedding_file(tmp_path / "db" / "all.npz", x, y)
    write_json(tmp_path / "db" / "meta.json", {"classes": list("abcd"), "files": {"all": {}}})
    for method, extra in (("fedlambda", ["--n_rounds", "2"]), ("dpcvae", TINY_GEN)):
        out = tmp_path / method
        argv = ["--database_root", tmp_path / "db", "--results_dir", out, "--method", method]
        argv += [*FAST, *HEAD, "--split_method", "iid", *extra]
        code, err = call(main_module.main, argv, capsys)
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        assert (
            sum(c["n_train"] for c in metrics["clients"])
            + sum(c["n_val"] + c["n_test"] for c in metrics["clients"])
            == 60
        )
    split = json.loads(next((tmp_path / "db" / "splits").glob("*.json")).read_text())
    assert sum(c["train"][3] for c in split["class_counts"]) == 1


# ----------------------------------------------------------------------------- partition.py


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--output", "{tmp}"], r"--output .*: exists and is not a file"),
        (["--output", "{tmp}/taken/split.json"], r"--output .*taken is a file, not a folder"),
        (["--seed", "-3"], r"--seed must be >= 0"),
        (["--n_clients", "61"], r"--n_clients 61 is more than the 60 samples"),
        (["--split_method", "nope"], r"argument --split_method: invalid choice"),
    ],
)
def test_bad_partition_flags_are_refused(tmp_path, capsys, flags, needle):
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    (tmp_path / "taken").write_text("a file")
    before = files_under(tmp_path)
    argv = ["--database_root", db, *(f.format(tmp=tmp_path) for f in flags)]
    code, err = call(partition.main, argv, capsys)
    assert_refused(code, err, needle)
    assert files_under(tmp_path) == before


# ----------------------------------------------------------------------------- create_db.py

TINY = ["--backbone", TINY_BACKBONE, "--quiet", "--num_workers", "0"]


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_create_db_database_root_that_cannot_be_a_folder(tmp_path, capsys, where):
    (tmp_path / "taken").write_text("a file")
    root = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "db"
    argv = ["--dataset", "digits", "--database_root", root, "--random_init", *TINY]
    code, err = call(create_db.main, argv, capsys)
    assert_refused(code, err, r"create_db.py: error: --database_root .*taken")


def test_create_db_names_a_corrupt_compressed_dataset_file(tmp_path, capsys):
    path = make_medmnist(tmp_path / "ds", size=28, compressed=True)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(200)
    path.write_bytes(bytes(data))
    argv = ["--dataset", "organsmnist", "--size", "28", "--dataset_root", tmp_path / "ds"]
    argv += ["--database_root", tmp_path / "db", "--random_init", *TINY]
    code, err = call(create_db.main, argv, capsys)
    assert_refused(code, err, r"organsmnist\.npz: .*(corrupt|not an \.npz)")
    assert not (tmp_path / "db" / "meta.json").exists()


# ----------------------------------------------------------------------------- collect, plots


@pytest.fixture
def finished_run(tmp_path):
    """A finished (tiny) run directory under tmp_path/results."""
    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    run = tmp_path / "results" / "run"
    argv = ["--database_root", str(db), "--results_dir", str(run), "--method", "fedavg", *FAST]
    argv += ["--n_rounds", "2"]
    assert main_module.main(argv) == 0
    return run


@pytest.mark.parametrize(
    ("tool", "breaks", "flags", "needle"),
    [
        ("collect", "config", [], r"config\.json: not valid JSON"),
        ("plots", "config", [], r"config\.json: not valid JSON"),
        ("plots", "history", [], r"history\.csv: not a valid history file"),
        ("collect", None, ["--out", "{tmp}/taken"], r"--out .*taken: exists and is not a folder"),
        ("plots", None, ["--out", "{tmp}/taken"], r"--out .*taken: exists and is not a folder"),
        ("collect", None, ["--name", "../table"], r"--name '\.\./table': a file name stem"),
        ("collect", None, ["{tmp}/nothing"], r"nothing: no such file or directory"),
    ],
    ids=[
        "collect-config",
        "plots-config",
        "plots-history",
        "collect-out",
        "plots-out",
        "collect-name",
        "collect-missing",
    ],
)
def test_collect_and_plots_refuse_bad_results_and_write_nothing(
    tmp_path, capsys, finished_run, tool, breaks, flags, needle
):
    if breaks == "config":
        (finished_run / "config.json").write_text("{truncated")
    if breaks == "history":
        (finished_run / "history.csv").write_text("round,train_loss\n1,abc\n")
    (tmp_path / "taken").write_text("a file")
    flags = [f.format(tmp=tmp_path) for f in flags]
    before = files_under(tmp_path)
    if tool == "collect":
        code, err = call(collect_main, [tmp_path / "results", *flags], capsys)
    else:
        out = ["--out", tmp_path / "plots"] if "--out" not in flags else []
        code, err = call(plots_main, [tmp_path / "results", *out, *flags], capsys)
    assert_refused(code, err, needle)
    assert files_under(tmp_path) == before
