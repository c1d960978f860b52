"""Security rules that must not come back: no pickle (no pickle-based modules, torch.load only
with weights_only=True, no torch.save outside the tests' own fixture files, np.load never with
allow_pickle=True and, in the project's code, always with allow_pickle=False), no eval/exec; and
paths read from files are never followed; a weights file's sha256 is recorded and checked."""

import ast
import json
from pathlib import Path

import pytest
from helpers.images import TINY_BACKBONE, make_medmnist
from helpers.paths import REPO

import data.create_db as create_db
import data.partition as partition
import main as main_module
from utils.io import sha256_file

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib"}


def python_files() -> list[Path]:
    """Every .py file of the project (not the virtual environment, caches or build outputs)."""
    return sorted(
        p
        for p in REPO.rglob("*.py")
        if not any(part.startswith(".") or part.endswith(".egg-info") for part in p.parts)
        and "__pycache__" not in p.parts
    )


def _name(node: ast.AST) -> str:
    """Dotted name of a call target, e.g. 'torch.load' or 'np.load' ('' if not a plain name)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def violations(path: Path, root: Path = REPO) -> list[str]:
    """The rule breaks in one file, as 'file:line: what' (file relative to `root`)."""
    rel = path.relative_to(root)
    is_test = rel.parts[0] == "tests"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    out.append(f"{where}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                out.append(f"{where}: imports from {node.module}")
            if node.module == "torch" and any(a.name in ("load", "save") for a in node.names):
                out.append(f"{where}: imports torch.load/save by name (call torch.load(...))")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in ("eval", "exec"):
                out.append(f"{where}: calls {name}()")
            elif name == "torch.load":
                if not _is_constant(_keyword(node, "weights_only"), True):
                    out.append(f"{where}: torch.load without weights_only=True")
            elif name == "torch.save" and not is_test:
                out.append(f"{where}: torch.save (pickle); write safetensors + JSON")
            elif name.endswith("read_pickle"):
                out.append(f"{where}: calls {name}")
            if _is_constant(_keyword(node, "allow_pickle"), True):
                out.append(f"{where}: allow_pickle=True")
            explicit = _is_constant(_keyword(node, "allow_pickle"), False)
            if name in ("np.load", "numpy.load") and not is_test and not explicit:
                out.append(f"{where}: np.load without an explicit allow_pickle=False")
    return out


def test_the_source_tree_has_no_pickle_no_unsafe_load_and_no_eval():
    files = python_files()
    assert REPO / "main.py" in files and len(files) > 30  # the scan sees the project
    found = [v for p in files for v in violations(p)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("import pickle", "imports pickle"),
        ("from joblib import load", "imports from joblib"),
        ("x = eval('1')", "calls eval()"),
        ("import torch\ntorch.load('w.pt')", "without weights_only=True"),
        ("import torch\ntorch.load('w.pt', weights_only=False)", "without weights_only=True"),
        ("import torch\ntorch.save({}, 'w.pt')", "torch.save (pickle)"),
        ("import numpy as np\nnp.load('a.npz', allow_pickle=True)", "allow_pickle=True"),
        ("import numpy as np\nnp.load('a.npz')", "without an explicit allow_pickle=False"),
        ("from torch import load", "imports torch.load/save by name"),
    ],
)
def test_the_scan_catches_each_pattern(tmp_path, code, what):
    path = tmp_path / "utils" / "bad.py"
    path.parent.mkdir()
    path.write_text(code + "\n")
    found = violations(path, root=tmp_path)
    assert any(what in v for v in found), found
    assert all(v.startswith("utils/bad.py:") for v in found)


def test_paths_written_in_a_split_file_are_not_followed(tmp_path):
    """main.py reads the database from --database_root, whatever the split file says."""
    from helpers.databases import make_gaussian_db

    db = make_gaussian_db(tmp_path / "db", n_per_file=(60,), dim=4)
    split_path = tmp_path / "split.json"
    argv = ["--database_root", str(db), "--n_clients", "3", "--split_method", "iid"]
    assert partition.main([*argv, "--output", str(split_path)]) == 0
    split = json.loads(split_path.read_text())
    split["database"]["root"] = str(tmp_path / "elsewhere")
    split_path.write_text(json.dumps(split))
    out = tmp_path / "run"
    argv += ["--split_file", str(split_path), "--results_dir", str(out), "--method", "local"]
    assert main_module.main([*argv, "--local_epochs", "2", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["database_root"] == str(db.resolve())
    assert not (tmp_path / "elsewhere").exists()


def test_create_db_records_the_weights_sha256_and_resume_checks_it(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    model = timm.create_model(TINY_BACKBONE)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    make_medmnist(tmp_path / "ds", size=28, counts=(6, 2, 3))
    argv = ["--dataset", "organsmnist", "--size", "28", "--dataset_root", tmp_path / "ds"]
    argv += ["--database_root", tmp_path / "db", "--weights", weights]
    argv += ["--backbone", TINY_BACKBONE, "--quiet", "--num_workers", "0"]
    assert create_db.main([str(a) for a in argv]) == 0
    meta = json.loads((tmp_path / "db" / "meta.json").read_text())
    assert meta["weights"] == str(weights.resolve())
    assert meta["weights_sha256"] == sha256_file(weights)
    assert meta["weights_loaded_by"] == "names"

    # the same path with other content is another backbone: --resume refuses it
    other = timm.create_model(TINY_BACKBONE)
    save_file({k: v.contiguous() + 1 for k, v in other.state_dict().items()}, str(weights))
    assert create_db.main([str(a) for a in [*argv, "--resume"]]) == 2
    assert "used other settings (weights_sha256" in capsys.readouterr().err
