"""The one averaging function of the project: a weighted mean of state dicts (FedAvg)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

StateDict = dict[str, torch.Tensor]


def average_state_dicts(
    states: Sequence[StateDict],
    weights: Sequence[float],
    keep: Callable[[str], bool] | None = None,
) -> StateDict:
    """Weighted mean of the tensors of `states` (weights are normalized to sum to one).

    `keep` selects the keys that are averaged (e.g. only the decoder's); other keys are left out
    of the result. Integer tensors (counters) are taken from the first state. The states must
    hold the same averaged keys with the same shapes (an update of another shape is refused, not
    broadcast) and the weights must be >= 0."""
    if not states:
        raise ValueError("no state to average")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    if any(not float(w) >= 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {list(weights)}")
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    kept = {k: keep is None or keep(k) for k in dict.fromkeys(k for s in states for k in s)}
    keys = [k for k in states[0] if kept[k]]
    for i, state in enumerate(states[1:], start=1):
        mine = [k for k in state if kept[k]]
        if sorted(mine) != sorted(keys):
            raise ValueError(f"state {i} holds keys {sorted(mine)}, state 0 holds {sorted(keys)}")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(
                    f"state {i}: {key} has shape {tuple(state[key].shape)}, "
                    f"state 0 has {tuple(states[0][key].shape)}"
                )
    out: StateDict = {}
    for key in keys:
        first = states[0][key]
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights):
            acc += state[key].to(torch.float64) * (float(w) / total)
        out[key] = acc.to(first.dtype)
    return out
