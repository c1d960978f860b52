"""utils/seeding.py: derived seeds, seeded construction, generators, and a client's private
randomness (seeded for simulation, or keyed by a secret)."""

import numpy as np
import pytest
import torch
from torch import nn

from utils import seeding
from utils.seeding import (
    SECRET_BYTES,
    derive_seed,
    generator,
    new_secret,
    private_generator,
    private_numpy_rng,
    seeded,
)

# --- derive_seed -----------------------------------------------------------------------------


def test_derive_seed_is_a_deterministic_63_bit_seed():
    assert derive_seed(3407, "client", 3, "head") == derive_seed(3407, "client", 3, "head")
    seeds = [derive_seed(base, *keys) for base in range(20) for keys in [(), ("a",), ("a", 1)]]
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert max(seeds) >= 2**62  # the whole range is used, not only small numbers


def test_distinct_paths_give_distinct_seeds():
    paths = [
        (0,),
        (1,),
        (0, "client"),
        (0, "client", 1),
        (0, "client", 2),
        (0, "client", 1, "head"),
        (0, "head", 1, "client"),  # order matters
        (1, "client", 1),
    ]
    seeds = [derive_seed(*p) for p in paths]
    assert len(set(seeds)) == len(paths)


def test_keys_count_by_their_text_and_the_base_by_its_integer():
    assert derive_seed(5, 3) == derive_seed(5, "3")
    assert derive_seed(np.int64(5), "x") == derive_seed(5, "x") == derive_seed(5.0, "x")


def test_every_seed_stream_has_its_own_key():
    """The module's stream names: one per use of randomness, so no two uses draw the same
    numbers from one seed."""
    streams = {
        name: value
        for name, value in vars(seeding).items()
        if name.isupper() and isinstance(value, str)
    }
    assert len(streams) > 20
    assert len(set(streams.values())) == len(streams)
    assert all("/" not in value for value in streams.values())  # "/" joins a path's keys


# --- seeded and generator --------------------------------------------------------------------


def test_seeded_builds_as_under_manual_seed():
    built = seeded(42, lambda: nn.Linear(6, 4))
    torch.manual_seed(42)
    reference = nn.Linear(6, 4)
    assert torch.equal(built.weight, reference.weight) and torch.equal(built.bias, reference.bias)
    assert not torch.equal(built.weight, seeded(43, lambda: nn.Linear(6, 4)).weight)


def test_seeded_leaves_the_global_rng_as_it_was():
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    seeded(1, lambda: torch.rand(1000))
    assert torch.equal(torch.rand(5), expected)
    # also when the factory raises

    def fail():
        torch.rand(10)
        raise RuntimeError("boom")

    torch.manual_seed(7)
    with pytest.raises(RuntimeError, match="boom"):
        seeded(1, fail)
    assert torch.equal(torch.rand(5), expected)


def test_generator_is_seeded_and_independent_of_the_global_rng():
    g = generator(9)
    assert isinstance(g, torch.Generator) and g.device.type == "cpu"
    first = torch.rand(4, generator=g)
    torch.manual_seed(0)
    torch.rand(100)
    assert torch.equal(first, torch.rand(4, generator=generator(9)))
    assert not torch.equal(first, torch.rand(4, generator=generator(10)))


# --- secrets and private streams --------------------------------------------------------------


def test_new_secret_is_32_fresh_bytes():
    keys = [new_secret() for _ in range(20)]
    assert SECRET_BYTES == 32
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    assert len(set(keys)) == 20
    # not a constant pattern: about half the bits are set
    bits = np.unpackbits(np.frombuffer(b"".join(keys), np.uint8))
    assert 0.4 < bits.mean() < 0.6


def test_private_streams_are_seeded_or_keyed_by_a_secret():
    seeded_stream = private_generator(5, "dp-noise", secret=None)
    assert torch.equal(
        torch.rand(8, generator=seeded_stream),
        torch.rand(8, generator=generator(derive_seed(5, "dp-noise"))),
    )
    key = new_secret()
    assert len(key) == 32 and key != new_secret()

    def draw(secret, *keys):
        return torch.randn(1000, generator=private_generator(5, *keys, secret=secret))

    same = draw(key, "dp-noise")
    assert torch.equal(same, draw(key, "dp-noise"))  # a site rebuilds its streams
    assert not torch.equal(same, draw(key, "batches"))
    assert not torch.equal(same, draw(new_secret(), "dp-noise"))
    # a keyed stream is none of the seeded ones a coordinator could try
    assert not torch.equal(same, torch.randn(1000, generator=generator(derive_seed(5, "dp-noise"))))
    assert abs(float(same.mean())) < 0.15 and 0.9 < float(same.std()) < 1.1
    uniform = torch.rand(20000, generator=private_generator(0, "x", secret=key))
    assert abs(float(uniform.mean()) - 0.5) < 0.01


def test_a_keyed_stream_separates_its_keys_path():
    key = new_secret()

    def draw(*keys):
        return torch.rand(16, generator=private_generator(0, *keys, secret=key))

    assert not torch.equal(draw("client", 1), draw("client", 2))
    assert not torch.equal(draw("client", 1), draw(1, "client"))
    assert torch.equal(draw("client", 1), draw("client", "1"))  # keys count by their text


def test_a_short_secret_is_refused():
    for make in (private_generator, private_numpy_rng):
        for short in (b"", b"x" * 15):
            with pytest.raises(ValueError, match="at least 16 bytes"):
                make(0, "dp-noise", secret=short)
        make(0, "dp-noise", secret=b"x" * 16)  # the shortest accepted


def test_private_numpy_rng_is_seeded_or_keyed_like_the_torch_streams():
    seeded_rng = private_numpy_rng(5, "labels", 2, secret=None)
    expected = np.random.default_rng(derive_seed(5, "labels", 2)).integers(0, 10**9, 8)
    assert np.array_equal(seeded_rng.integers(0, 10**9, 8), expected)
    key = new_secret()

    def draw(secret, *keys):
        return private_numpy_rng(5, *keys, secret=secret).integers(0, 10**9, 8)

    assert np.array_equal(draw(key, "labels", 2), draw(key, "labels", 2))
    assert not np.array_equal(draw(key, "labels", 2), draw(key, "labels", 3))
    assert not np.array_equal(draw(key, "labels", 2), draw(new_secret(), "labels", 2))
    assert not np.array_equal(draw(key, "labels", 2), expected)
    labels = private_numpy_rng(0, "labels", secret=key).integers(0, 4, 20000)
    assert np.allclose(np.bincount(labels, minlength=4) / 20000, 0.25, atol=0.02)
