"""algorithms/federation/aggregation.py: the weighted mean of state dicts (FedAvg)."""

import pytest
import torch

from algorithms.federation.aggregation import average_state_dicts


def _states(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(2, 3, generator=g), "b": torch.randn(3, generator=g)} for _ in range(n)
    ]


def test_average_is_the_weighted_mean_and_respects_the_key_filter():
    a = {"dec.w": torch.tensor([1.0, 2.0]), "enc.w": torch.tensor([5.0]), "n": torch.tensor(3)}
    b = {"dec.w": torch.tensor([3.0, 6.0]), "enc.w": torch.tensor([7.0]), "n": torch.tensor(9)}
    out = average_state_dicts([a, b], [1, 3], keep=lambda k: not k.startswith("enc."))
    torch.testing.assert_close(out["dec.w"], torch.tensor([2.5, 5.0]))
    assert "enc.w" not in out
    assert int(out["n"]) == 3  # integer buffers are taken from the first state
    with pytest.raises(ValueError, match="weights"):
        average_state_dicts([a], [0])


def test_the_average_equals_the_hand_computed_weighted_mean():
    states, weights = _states(), [1.0, 2.0, 5.0]
    out = average_state_dicts(states, weights)
    assert set(out) == {"w", "b"}
    for key in out:
        by_hand = (1 * states[0][key] + 2 * states[1][key] + 5 * states[2][key]) / 8
        torch.testing.assert_close(out[key], by_hand)


def test_only_the_proportions_of_the_weights_matter():
    states = _states(seed=1)
    out = average_state_dicts(states, [1, 2, 5])
    for scaled in ([10, 20, 50], [0.125, 0.25, 0.625]):
        again = average_state_dicts(states, scaled)
        for key in out:
            torch.testing.assert_close(again[key], out[key])
    # equal weights: the plain mean; a zero weight leaves its state out
    plain = average_state_dicts(states, [4, 4, 4])
    torch.testing.assert_close(plain["w"], torch.stack([s["w"] for s in states]).mean(0))
    two = average_state_dicts(states, [1, 0, 1])
    torch.testing.assert_close(two["b"], (states[0]["b"] + states[2]["b"]) / 2)
    # one state: itself
    torch.testing.assert_close(average_state_dicts(states[:1], [7])["w"], states[0]["w"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_shape_are_kept(dtype):
    states = [{k: v.to(dtype) for k, v in s.items()} for s in _states(seed=2)]
    out = average_state_dicts(states, [3, 1, 1])
    for key, value in out.items():
        assert value.dtype == dtype and value.shape == states[0][key].shape


def test_the_mean_is_accumulated_in_float64():
    """The float32 mean of 0.1, 0.2, 0.3 is the exact mean of those float32 values rounded once
    to float32, not a float32 running sum (which lands one ulp away)."""
    states = [{"w": torch.tensor([v], dtype=torch.float32)} for v in (0.1, 0.2, 0.3)]
    out = average_state_dicts(states, [1, 1, 1])
    exact = sum(s["w"].double() for s in states) / 3
    assert out["w"].item() == exact.float().item()
    running = torch.zeros(1)
    for s in states:
        running += s["w"] * (1 / 3)
    assert running.item() != out["w"].item()  # what a float32 accumulation would give


def test_integer_tensors_come_from_the_first_state_as_copies():
    states = [{"steps": torch.tensor([4, 5]), "w": torch.ones(2)}, {"steps": torch.tensor([9, 9])}]
    states[1]["w"] = torch.zeros(2)
    out = average_state_dicts(states, [1, 1])
    assert out["steps"].tolist() == [4, 5] and out["steps"].dtype == torch.int64
    out["steps"] += 1
    assert states[0]["steps"].tolist() == [4, 5]  # not the first state's tensor itself


def test_the_result_shares_no_tensor_with_the_inputs():
    states = _states(n=1)
    out = average_state_dicts(states, [1])
    out["w"].zero_()
    assert states[0]["w"].abs().sum() > 0


def test_the_keep_filter_sees_every_key_and_selects_the_result():
    states = _states(seed=3)
    seen = []

    def keep(key):
        seen.append(key)
        return key == "b"

    out = average_state_dicts(states, [1, 1, 1], keep=keep)
    assert sorted(seen) == ["b", "w"] and list(out) == ["b"]


@pytest.mark.parametrize(
    ("states", "weights", "message"),
    [
        ([], [], "no state to average"),
        (_states(n=2), [1.0], "2 states but 1 weights"),
        (_states(n=2), [1.0, 2.0, 3.0], "2 states but 3 weights"),
        (_states(n=2), [0, 0], "must sum to a positive number, got 0"),
        (_states(n=2), [1, -1], r"weights must be >= 0, got \[1, -1\]"),
        (_states(n=2), [2, -1], r"weights must be >= 0"),
        (_states(n=2), [float("nan"), 1], r"weights must be >= 0, got \[nan, 1\]"),
    ],
)
def test_bad_inputs_are_refused(states, weights, message):
    with pytest.raises(ValueError, match=message):
        average_state_dicts(states, weights)


def test_a_state_lacking_a_key_of_the_first_or_holding_another_is_refused():
    a, b = _states(n=2)
    del b["w"]
    with pytest.raises(ValueError, match=r"state 1 holds keys \['b'\], state 0 holds \['b', 'w'\]"):
        average_state_dicts([a, b], [1, 1])
    a, b = _states(n=2)
    b["extra"] = torch.zeros(2)
    with pytest.raises(ValueError, match="state 1 holds keys"):
        average_state_dicts([a, b], [1, 1])
    assert list(average_state_dicts([a, b], [1, 1], keep=lambda k: k != "extra")) == ["w", "b"]


def test_an_update_of_another_shape_is_refused_not_broadcast():
    a, b = _states(n=2)
    b["b"] = b["b"][:1]
    with pytest.raises(ValueError, match=r"state 1: b has shape \(1,\), state 0 has \(\d+,\)"):
        average_state_dicts([a, b], [1, 1])
