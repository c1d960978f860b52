"""Seeds derived from the run seed, and seeded construction without global RNG side effects."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

# Seed streams: the keys given to `derive_seed`, one per use of randomness. Their strings are part
# of every result (a changed string changes every number, and Flower equals main.py only while
# both use the same ones), so they are written here once and imported everywhere.
SAMPLING = "sampling"  # which clients take part in each round (run seed)
FEDAVG_GLOBAL = "fedavg-global"  # the server's initial FedAvg head (run seed)
FEDAVG_CLIENT = "fedavg-client"  # a FedAvg client: its head's init and batch order (+ client id)
LOCAL_HEAD = "local"  # a client's head on its real training data (+ client id)
CENTRALIZED_HEAD = "centralized"  # the head on the pooled data
SYNTHETIC_HEAD = "head-synthetic"  # a client's head on its synthetic data (+ client id)
LABELS = "labels"  # the synthetic labels of a client (+ client id; --synthetic_labels uniform)
SAMPLE = "sample"  # the latent draws of a client's synthetic data (+ client id)
GENERATIVE_GLOBAL = "global"  # the initial decoder / generator (after the method name)
GENERATIVE_CLIENT = "client"  # a generative client's own seed (after the method name, + id)
INIT = "init"  # a CVAE client's model (client seed)
INIT_GENERATOR = "init-g"  # a CGAN client's generator (client seed)
INIT_DISCRIMINATOR = "init-d"  # a CGAN client's discriminator (client seed)
BATCHES = "batches"  # a generative client's batches (client seed)
DP_NOISE = "dp-noise"  # a generative client's DP-SGD noise (client seed)
LATENT = "latent"  # a generative client's latent draws in training (client seed; audit: attacks)
AUDIT = "audit"  # the audit's own seed (run seed)
CANARIES = "canaries"  # the audit's canary records (audit seed)
MEMBERS = "members"  # which canaries are members (audit seed)


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


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed` (the same seed gives other draws on
    CUDA than on CPU: determinism holds on one device)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
