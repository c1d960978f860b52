"""Checkpoints without pickle: tensors in a safetensors file, everything else in JSON.

A state is any nesting of dicts, lists, tuples, tensors, numbers, strings and None (a client's
`state_dict()`, the global weights, the history rows). `pack` splits it into named tensors and
a JSON skeleton that refers to them; `unpack` puts it back together with the same types (dict
keys keep their type: optimizer states are keyed by int; tuples stay tuples; NaN and Inf floats
are kept, tagged, so the JSON stays standard).

On disk a checkpoint is a folder holding `state.json` and the tensor file it names. Saving
writes a new tensor file, then replaces `state.json` atomically, then removes older tensor
files: a process killed at any point leaves the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from utils.io import atomic_path, sha256_file

STATE_FILE = "state.json"
CHECKPOINT_FORMAT = 1

# Every JSON object of a skeleton is one of these tags, so plain data never looks like a tag.
_TENSOR, _DICT, _TUPLE, _FLOAT = "tensor", "dict", "tuple", "float"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or does not belong to this run."""


def pack(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(named tensors, JSON-ready skeleton) of a nested state."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = str(len(tensors))
            tensors[name] = value.detach().cpu().contiguous()
            return {_TENSOR: name}
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, int | str) or isinstance(k, bool):
                    raise TypeError(f"cannot store a dict key of type {type(k).__name__}")
            return {_DICT: [[k, encode(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return {_FLOAT: repr(value)}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")

    return tensors, encode(state)


def unpack(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The state that `pack` split, with tensors of their original dtypes and shapes."""

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            ((tag, inner),) = value.items()
            if tag == _TENSOR:
                return tensors[inner].clone()
            if tag == _DICT:
                return {k: decode(v) for k, v in inner}
            if tag == _TUPLE:
                return tuple(decode(v) for v in inner)
            if tag == _FLOAT:
                return float(inner)
            raise ValueError(f"unknown tag {tag!r}")
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(skeleton)


# safetensors' dtype names
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write `tensors` as a safetensors file, streamed tensor by tensor from their memory (no
    serialized copy of the whole file, which for ten DP-CGAN clients is ~0.5 GB a round), and
    return the file's sha256. Read back with safetensors' own loader."""
    header: dict[str, dict] = {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store a tensor of dtype {t.dtype} in a checkpoint")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for block in (len(head).to_bytes(8, "little"), head):
            fh.write(block)
            digest.update(block)
        for t in tensors.values():
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data
            fh.write(data)
            digest.update(data)
    return digest.hexdigest()


def save_checkpoint(directory: str | os.PathLike, state: Any, step: int) -> None:
    """Write `state` as the checkpoint of `step` (e.g. the number of finished rounds)."""
    directory = Path(directory)
    tensors, skeleton = pack(state)
    name = f"tensors_{step:06d}.safetensors"
    with atomic_path(directory / name) as tmp:
        sha256 = write_safetensors(tmp, tensors)
    text = json.dumps(
        {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "tensors": name,
            "tensors_sha256": sha256,
            "state": skeleton,
        },
        allow_nan=False,
    )
    with atomic_path(directory / STATE_FILE) as tmp:
        tmp.write_text(text + "\n")
    for old in directory.glob("tensors_*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: str | os.PathLike) -> tuple[int, Any] | None:
    """(step, state) of the checkpoint in `directory`, or None when there is none."""
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {doc.get('format')!r}")
        name = str(doc["tensors"])
        # the tensor file is named by this file: a plain name inside the checkpoint folder only
        if Path(name).name != name or not name.startswith("tensors_"):
            raise CheckpointError(f"{path}: tensor file {name!r} is not a plain file name")
        tensor_path = directory / name
        if sha256_file(tensor_path) != doc["tensors_sha256"]:
            raise CheckpointError(f"{tensor_path}: content does not match {path} (sha256)")
        return int(doc["step"]), unpack(load_file(str(tensor_path)), doc["state"])
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None


class Stateful(Protocol):
    """A client whose whole state (model, optimizer, RNGs, accountant) can be saved and restored.
    `state_dict()` may return the live tensors (no copies): it is serialized at once."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class RoundCheckpoint:
    """The checkpoint of a federated run, rewritten after every round: the global weights,
    every client's `state_dict()`, the history rows and the number of finished rounds.

    `identity` (e.g. the configuration hash and the seed) is stored with it; a checkpoint of
    another run is refused. `elapsed_before` is the training time of the rounds before a resume
    (restored by `restore`), so the reported wall time covers the whole run.

    `enabled` False (a `--secure_noise` run): nothing is ever written. A client's `state_dict()`
    holds its private generators' states (DP noise, Poisson batches, latent draws); on disk they
    would let a reader regenerate the later noise draws and rewind the Mersenne Twister to the
    earlier ones, i.e. undo the secret key. Such a run is therefore not checkpointed at all
    (and `--resume` refuses it, algorithms/options.py): an interrupted secure run starts over."""

    directory: Path
    identity: dict
    interval: float = 0.0  # seconds between checkpoints (0: after every round)
    started: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0
    last_saved: float = field(default_factory=time.perf_counter)
    enabled: bool = True
    restart: str = "start the run over"  # what a refusal tells the user (the caller's flags)

    def exists(self) -> bool:
        return (Path(self.directory) / STATE_FILE).is_file()

    def elapsed(self) -> float:
        """Seconds of training so far, over every attempt of this run."""
        return self.elapsed_before + time.perf_counter() - self.started

    def restore(
        self, clients: Sequence[Stateful], weights: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[dict], int]:
        """(global weights, history rows, first round to run): the checkpoint's, loaded into
        `clients`, or `weights`, [] and 0 when there is no checkpoint yet (or it is disabled)."""
        loaded = load_checkpoint(self.directory) if self.enabled else None
        if loaded is None:
            return weights, [], 0
        rounds, state = loaded
        where = Path(self.directory) / STATE_FILE
        if state.get("identity") != self.identity:
            raise CheckpointError(
                f"{where}: checkpoint of another run ({state.get('identity')}, this run is "
                f"{self.identity}); {self.restart}"
            )
        if len(state["clients"]) != len(clients):
            raise CheckpointError(
                f"{where}: holds {len(state['clients'])} clients, this run has {len(clients)}"
            )
        for client, client_state in zip(clients, state["clients"]):
            client.load_state_dict(client_state)
        print(f"resuming from {self.directory}: {rounds} round(s) done", file=sys.stderr)
        self.elapsed_before = float(state["elapsed"])
        self.started = time.perf_counter()
        return state["weights"], state["history"], rounds

    def saver(self, clients: Sequence[Stateful]) -> Callable[[int, dict, list[dict]], None]:
        """The `after_round` hook of run_rounds that writes this checkpoint."""

        def save(rnd: int, weights: dict[str, torch.Tensor], history: list[dict]) -> None:
            if not self.enabled:
                return
            if time.perf_counter() - self.last_saved < self.interval:
                return
            state = {
                "identity": self.identity,
                "weights": weights,
                "clients": [c.state_dict() for c in clients],
                "history": history,
                "elapsed": self.elapsed(),
            }
            save_checkpoint(self.directory, state, rnd + 1)
            self.last_saved = time.perf_counter()

        return save

    def remove(self) -> None:
        """Delete the checkpoint (once the run's results are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)
