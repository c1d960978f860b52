"""Conversions between the project's objects and Flower records (no pickle anywhere).

Two kinds of data pass through here:
- what crosses the network: shared weights (ArrayRecord), a client's sample count and its spent
  epsilon (MetricRecord), and the final metrics (see fl/client_app.py);
- what stays on a site: a client's whole state between rounds (model, optimizer, RNG states,
  accountant history), kept in the node's `Context.state` as an ArrayRecord of its tensors plus
  a JSON skeleton that names them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from algorithms.federation.aggregation import StateDict
from algorithms.federation.rounds import ClientUpdate
from utils.checkpoint import pack, unpack

Record = ConfigRecord | MetricRecord  # Flower types their values as unions of scalars and lists


def record_int(record: Record, key: str) -> int:
    """`record[key]` as an int, as `int()` reads it (a list is a TypeError)."""
    value = record[key]
    if isinstance(value, list):
        raise TypeError(f"record value {key!r} is a list, not a number")
    return int(value)


def record_float(record: Record, key: str) -> float:
    """`record[key]` as a float, as `float()` reads it (a list is a TypeError)."""
    return as_float(record[key], key)


def as_float(value: object, key: str) -> float:
    """A record value as a float, as `float()` reads it (a list or None is a TypeError)."""
    if not isinstance(value, (int, float, str, bytes)):
        raise TypeError(f"record value {key!r} is {type(value).__name__}, not a number")
    return float(value)


def record_floats(record: Record, key: str) -> list[float]:
    """`record[key]` (a list of numbers) as a list of floats."""
    value = record[key]
    if not isinstance(value, list):
        raise TypeError(f"record value {key!r} is {type(value).__name__}, not a list")
    return [as_float(v, key) for v in value]


def metric_record(values: Mapping[str, int | float | list[int] | list[float]]) -> MetricRecord:
    """A MetricRecord of `values` (Flower's constructor wants exactly its value union)."""
    return MetricRecord(dict(values))


def pack_state(state: Any) -> tuple[ArrayRecord, str]:
    """A nested state as an ArrayRecord of its tensors and a JSON skeleton naming them (the
    same encoding as checkpoints on disk: utils.checkpoint.pack)."""
    tensors, skeleton = pack(state)
    arrays = ArrayRecord()
    for name, tensor in tensors.items():
        arrays[name] = Array(tensor.numpy())
    return arrays, json.dumps(skeleton)


def unpack_state(arrays: ArrayRecord, skeleton: str) -> Any:
    """The state that `pack_state` split, with tensors of the original dtypes and shapes."""
    tensors = {name: torch.from_numpy(np.array(arrays[name].numpy())) for name in arrays}
    return unpack(tensors, json.loads(skeleton))


def save_state(state: RecordDict, name: str, value: Any) -> None:
    """Keep `value` (e.g. a client's `state_dict()`) in a node's Context.state under `name`."""
    arrays, skeleton = pack_state(value)
    state[f"{name}.arrays"] = arrays
    state[f"{name}.skeleton"] = ConfigRecord({"json": skeleton})


def load_state(state: RecordDict, name: str) -> Any | None:
    """What `save_state` kept under `name`, or None if nothing was."""
    if f"{name}.skeleton" not in state:
        return None
    skeleton = str(state.config_records[f"{name}.skeleton"]["json"])
    return unpack_state(state.array_records[f"{name}.arrays"], skeleton)


def weights_record(weights: StateDict) -> ArrayRecord:
    """Shared weights as they cross the network (float32 arrays, names kept)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in weights.items()})


def record_weights(record: ArrayRecord) -> StateDict:
    """The state dict of `weights_record` (writable copies)."""
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


# The only metric of a round that leaves a site. The train loss stays: it is computed on the
# training records without noise, so it is not covered by the DP guarantee.
SENT_METRICS = ("epsilon",)


def update_content(client_id: int, update: ClientUpdate) -> RecordDict:
    """A client's reply to one round: shared weights, its sample count (the FedAvg weight) and
    the epsilon it has spent so far (under DP); nothing else."""
    sent = {k: v for k, v in update.metrics.items() if k in SENT_METRICS}
    return RecordDict(
        {
            "weights": weights_record(update.weights),
            "client": metric_record({"id": client_id, "n_samples": update.n_samples}),
            "metrics": metric_record(sent),
        }
    )


def content_update(content: RecordDict) -> tuple[int, ClientUpdate]:
    """(client id, update) of a round's reply."""
    client = content.metric_records["client"]
    metrics = {k: as_float(v, k) for k, v in content.metric_records["metrics"].items()}
    update = ClientUpdate(
        record_weights(content.array_records["weights"]), record_int(client, "n_samples"), metrics
    )
    return record_int(client, "id"), update


# A secure round's messages (--secure_aggregation): SecAgg+'s, on their own train action
SECURE_ACTION = "secure"
SECURE_TRAIN = f"train.{SECURE_ACTION}"

WITHHELD = "withheld"  # a site's reply record: its policy keeps the metrics computed on its data
