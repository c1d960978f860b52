"""Seeds derived from the run seed, seeded construction without global RNG side effects, and the
one place where a client's private randomness comes from (`private_generator`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import TypeVar

import numpy as np
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
JOINT_HEAD = "head-joint"  # a client's head on its real plus synthetic data (+ client id)
LABELS = "labels"  # the synthetic labels of a client (+ client id; --synthetic_labels uniform)
SAMPLE = "sample"  # the latent draws of a client's synthetic data (+ client id)
GLOBAL_SAMPLE = "global-sample"  # the server's balanced synthetic set from the global model
GLOBAL_HEAD = "global-head"  # the head on that set (the global synthetic-only accuracy)
GENERATIVE_GLOBAL = "global"  # the initial decoder / generator (after the method name)
GENERATIVE_CLIENT = "client"  # a generative client's own seed (after the method name, + id)
INIT = "init"  # a CVAE client's model (client seed)
INIT_GENERATOR = "init-g"  # a CGAN client's generator (client seed)
INIT_DISCRIMINATOR = "init-d"  # a CGAN client's discriminator (client seed)
BATCHES = "batches"  # a generative client's batches (client seed)
DP_NOISE = "dp-noise"  # a generative client's DP-SGD noise (client seed)
PFT_FIT = "pft-fit"  # a fedpft client's mixture fits (client seed, + class)
LATENT = "latent"  # a generative client's latent draws in training (client seed; audit: attacks)
COUNT = "count"  # the noise of a DP client's released record count (client seed)
AUDIT = "audit"  # the audit's own seed (run seed)
CANARIES = "canaries"  # the audit's canary records (audit seed)
MEMBERS = "members"  # which canaries are members (audit seed)
SECURE_ROTATION = "secure-rotation"  # secure aggregation's rotations (run seed, step, part)


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


# A secret key: 32 bytes of OS entropy (`new_secret`), kept where the data is and never written
# to results. With it, `private_generator` draws from streams nobody else can reproduce.
SECRET_BYTES = 32
# torch's CPU generator state (torch.Generator.get_state): a legacy header of 24 bytes, then the
# Mersenne Twister's 624 words, each stored in the low half of a little-endian uint64.
_MT_WORDS, _MT_OFFSET, _MT_STATE_BYTES = 624, 24, 5056


def new_secret() -> bytes:
    """32 bytes from the operating system's cryptographically secure source."""
    return secrets.token_bytes(SECRET_BYTES)


def private_generator(
    seed: int, *keys: object, secret: bytes | None, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The source of every private random draw of a client (DP noise, Poisson batches, the noisy
    record count, latent draws, synthetic sampling): the one function to call for them.

    `secret` None: seeded from the run seed (`generator(derive_seed(seed, *keys))`), reproducible
    by anyone who knows the seed: for simulation only. With a secret: a Mersenne Twister whose
    whole state (624 x 32 bits) is SHAKE-256 of the secret and the stream's keys, so each stream
    is unpredictable to whoever lacks the secret (the coordinator, readers of the results), and a
    site that keeps the secret rebuilds the same streams. Not a CSPRNG: 624 consecutive raw
    outputs would reveal the state, but no raw output ever leaves the site (they become Gaussian
    noise added to clipped gradients, batch memberships, latent draws)."""
    if secret is None:
        return generator(derive_seed(seed, *keys), device)
    if len(secret) < 16:
        raise ValueError("a secret key needs at least 16 bytes")
    path = "/".join(str(k) for k in keys).encode()
    if torch.device(device).type != "cpu":  # CUDA's Philox takes a 64-bit seed, not a state
        digest = hashlib.shake_256(secret + b"/" + path).digest(8)
        return generator(int.from_bytes(digest, "little") & (2**63 - 1), device)
    words = np.frombuffer(hashlib.shake_256(secret + b"/" + path).digest(4 * _MT_WORDS), "<u4")
    g = generator(0)  # a valid state to start from (left=1: the next draw regenerates the words)
    state = g.get_state().clone()
    if state.numel() != _MT_STATE_BYTES:
        raise RuntimeError(f"unexpected torch generator state ({state.numel()} bytes)")
    body = torch.frombuffer(bytearray(words.astype("<u8").tobytes()), dtype=torch.uint8)
    state[_MT_OFFSET : _MT_OFFSET + len(body)] = body
    g.set_state(state)
    return g


def private_numpy_rng(seed: int, *keys: object, secret: bytes | None) -> np.random.Generator:
    """A numpy Generator for private draws (the synthetic labels), from the same key as
    `private_generator`: seeded by the run seed, or by 32 bytes of SHAKE-256(secret, keys)."""
    if secret is None:
        return np.random.default_rng(derive_seed(seed, *keys))
    if len(secret) < 16:
        raise ValueError("a secret key needs at least 16 bytes")
    path = "/".join(str(k) for k in keys).encode()
    return np.random.default_rng(
        int.from_bytes(hashlib.shake_256(secret + b"/" + path).digest(32), "little")
    )
