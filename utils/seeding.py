"""Seeds derived from the run seed, and seeded construction without global RNG side effects."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def derive_seed(base: int, *keys: object) -> int:
    """A 63-bit seed determined by the run seed and a path of keys (e.g. 'client', 3, 'head')."""
    text = "/".join([str(int(base)), *(str(k) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seeded(seed: int, factory: Callable[[], T]) -> T:
    """Call `factory` (e.g. a module constructor) under `torch.manual_seed(seed)`, leaving the
    global torch RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
