"""Packing plans (first-fit decreasing) against hand-checked instances and invariants."""
import math

import numpy as np
import pytest

from seaweed_jax.data.packing import first_fit_decreasing, padding_fraction


def test_a_hand_checked_instance():
    # Longest first: 7 -> bin0, 6 -> bin1, 5 -> bin2, 3 -> bin0 (7+3), 2 -> bin1 (6+2), 2 -> bin1 (8+2)
    lengths = [2, 7, 3, 5, 6, 2]
    bins = first_fit_decreasing(lengths, 10)
    assert bins == [[1, 2], [4, 0, 5], [3]]
    assert padding_fraction(bins, lengths, 10) == pytest.approx(1 - 25 / 30)


def test_invariants_on_random_mixes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = [int(n) for n in rng.integers(1, 257, rng.integers(1, 60))]
        bins = first_fit_decreasing(lengths, 256)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))   # each sample once
        assert all(sum(lengths[i] for i in b) <= 256 for b in bins)              # capacity
        lower = math.ceil(sum(lengths) / 256)                                    # any packing needs this many
        assert lower <= len(bins)
        # No two bins could be merged: in first fit, bin j's first sample did not fit into any
        # earlier bin, so every pair of bins holds more than max_tokens together.
        loads = sorted(sum(lengths[i] for i in b) for b in bins)
        assert len(loads) < 2 or loads[0] + loads[1] > 256


def test_a_sample_longer_than_the_sequence_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="sample 1 has 300 tokens, more than max_tokens=256.*max_tokens or crop"):
        first_fit_decreasing([10, 300, 20], 256)
