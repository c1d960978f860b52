"""Where torch computes: `--device auto|cpu|cuda` resolved once, and what a run records of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Execution:
    """How a run computes, not what: the torch device ("cpu" or "cuda") and whether the
    simulated clients of a DP generative method train all at once as one stacked model
    (`vectorized`) or one after another. Neither enters the configuration hash: results are the
    same on one device (bit for bit per path), statistically the same across devices and paths."""

    device: str = "cpu"
    vectorized: bool = False


# The default: the per-client path on CPU (the bit-exact reference).
ON_CPU = Execution()


def resolve_device(name: str, flag: str) -> str:
    """ "cpu" or "cuda" for the device `name` that the command-line `flag` gave (auto: CUDA
    when available); ValueError naming the flag for a CUDA request on a machine without CUDA."""
    if name not in DEVICES:
        raise ValueError(f"{flag} must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{flag} cuda: CUDA is not available here (torch.cuda.is_available() is False); "
            f"use {flag} cpu or auto"
        )
    return name


def describe_device(device: str) -> dict:
    """What config.json records of the device: its kind, and the GPU's name on CUDA."""
    out: dict = {"device": device}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
    return out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[int]:
    """Torch on one CPU thread inside the block, the previous count restored after it (and
    yielded: the thread budget a caller may spend on clients instead). Threads inside one small
    client meet at every operation and slow down many times when other processes share the
    cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
