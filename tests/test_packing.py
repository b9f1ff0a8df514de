"""Packing plans (first-fit decreasing) against hand-checked instances and invariants; the
layout of rows of padding only (from a template example) against the construction it replaced."""
import math

import numpy as np
import pytest

from seaweed_jax.data.packing import Capacity, first_fit_decreasing, layout, padding_fraction


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


# --------------------------------------------------------------------------- padding-only layout

CAP = Capacity(video_tokens=12, text_tokens=10, samples=3)
PATCH = (1, 2, 2)


def example(seed, frames=2, text=3):
    """latents (frames, 4, 4, 5) -> frames * 4 patch tokens of width 1*2*2*5 = 20; 6 text ids."""
    r = np.random.default_rng(seed)
    mask = np.arange(6) < text
    return {"latents": r.standard_normal((frames, 4, 4, 5)).astype(np.float32),
            "text_ids": np.where(mask, r.integers(1, 50, 6), 0).astype(np.int32), "text_mask": mask,
            "source": np.int32(3), "index": np.int32(seed)}


def test_an_all_padding_layout_equals_the_old_zeroed_construction():
    ex = example(7)
    got = layout([[]] * 3, CAP, PATCH, min_text_tokens=2, template=ex)
    # Reference: the construction PackedIterator._padding used before, a real example laid
    # out in row 0 and that row then overwritten with the padding values.
    old = layout([[ex]] + [[]] * 2, CAP, PATCH, min_text_tokens=2)
    for k, v in old.items():
        v[0] = -1 if k in ("source", "index") else 0
    assert got.keys() == old.keys()
    for k in old:
        assert got[k].dtype == old[k].dtype and got[k].shape == old[k].shape, k
        np.testing.assert_array_equal(got[k], old[k], err_msg=k)
    # and by hand: B=3 rows, Nv=12, width 20, Nt=10, S=3 slots of L=6 text ids
    shapes = {"video_tokens": (3, 12, 20), "video_segment": (3, 12), "video_positions": (3, 12, 3),
              "text_segment": (3, 10), "text_positions": (3, 10), "text_ids": (3, 3, 6),
              "text_mask": (3, 3, 6), "sample_frames": (3, 3), "sample_tokens": (3, 3),
              "source": (3, 3), "index": (3, 3)}
    assert {k: v.shape for k, v in got.items()} == shapes
    assert got["video_tokens"].dtype == np.float32 and got["text_mask"].dtype == bool
    for k, v in got.items():
        np.testing.assert_array_equal(v, -1 if k in ("source", "index") else 0, err_msg=k)


def test_the_template_only_shapes_the_layout():
    bins = [[example(1), example(2, frames=1)], [example(3, text=6)]]
    other = example(99, frames=1, text=1)   # same C and L, other values
    want = layout(bins, CAP, PATCH, min_text_tokens=2)
    got = layout(bins, CAP, PATCH, min_text_tokens=2, template=other)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert list(got["index"][0]) == [1, 2, -1] and list(got["sample_tokens"][0]) == [8, 4, 0]


def test_all_empty_bins_without_a_template_name_the_fix():
    with pytest.raises(ValueError, match=r"every packed sequence is empty.*template="):
        layout([[], []], CAP, PATCH, min_text_tokens=2)
