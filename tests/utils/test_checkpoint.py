"""Checkpoint files: safetensors + JSON (no pickle), exact round trip, atomic replacement."""

import json

import pytest
import torch
from safetensors.torch import load_file

from utils.checkpoint import CheckpointError, load_checkpoint, pack, save_checkpoint, unpack


def optimizer_state() -> dict:
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, fused=True)
    layer(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_pack_round_trip_keeps_types_keys_and_values():
    rng = torch.Generator()
    rng.manual_seed(7)
    state = {
        "optimizer": optimizer_state(),  # int keys, tuple betas, 0-d step tensors
        "rng": rng.get_state(),
        "accountant": [(1.25, 0.5, 3)],
        "history": [{"round": 1, "val_acc": float("nan"), "loss": 0.1 + 0.2}],
        "flags": {"on": True, "off": None, "inf": float("-inf")},
    }
    tensors, skeleton = pack(state)
    json.dumps(skeleton, allow_nan=False)  # standard JSON
    back = unpack(tensors, json.loads(json.dumps(skeleton)))
    assert list(back["optimizer"]["state"]) == [0, 1]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    for k, v in state["optimizer"]["state"][0].items():
        restored = back["optimizer"]["state"][0][k]
        assert torch.equal(restored, v) and restored.dtype == v.dtype
    assert torch.equal(back["rng"], state["rng"])
    assert back["accountant"] == [(1.25, 0.5, 3)] and isinstance(back["accountant"][0], tuple)
    assert back["history"][0]["loss"] == 0.1 + 0.2
    assert back["history"][0]["val_acc"] != back["history"][0]["val_acc"]  # NaN
    assert back["flags"] == {"on": True, "off": None, "inf": float("-inf")}
    with pytest.raises(TypeError, match="cannot store a set"):
        pack({"x": {1, 2}})


def test_save_replaces_the_previous_checkpoint_and_leaves_only_its_files(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, {"w": torch.ones(2), "round": 1}, 1)
    save_checkpoint(tmp_path, {"w": torch.full((2,), 2.0), "round": 2}, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "state.json",
        "tensors_000002.safetensors",
    ]
    step, state = load_checkpoint(tmp_path)
    assert step == 2 and state["round"] == 2 and torch.equal(state["w"], torch.full((2,), 2.0))
    assert set(load_file(str(tmp_path / "tensors_000002.safetensors"))) == {"0"}


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, 1)
    doc = json.loads((tmp_path / "state.json").read_text())

    (tmp_path / "tensors_000001.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path)

    # a state.json may only name a tensor file inside its own folder
    (tmp_path / "state.json").write_text(json.dumps({**doc, "tensors": "../elsewhere"}))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        load_checkpoint(tmp_path)

    (tmp_path / "state.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)
