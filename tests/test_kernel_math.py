"""The attention kernels package, pinned against independent hand-built references.

What is pinned, and against what:
- masks: window bounds, window ids, gather tables, window-major layouts and dense masks are
  compared with masks written out by hand from the definitions (per-axis window index of each
  (t, h, w) coordinate, larger windows first; key padding; packed segment ids), including the
  video-grid borders, window edges, text rows and the validation boundaries.
- reference (xla backend): every mask type against a float64 numpy softmax(q k^T * scale +
  mask) v written here; default scale 1/sqrt(Dh); a fully masked row gives uniform weights
  (the reference's finite mask value), i.e. the mean of v.
- splash: its kernel masks (evaluated on index grids), block counts, segment ids, kernel
  token order, mesh specs and kernel settings are checked without running Pallas; then the
  Pallas kernel (interpret mode on CPU, tiniest shapes) equals the numpy reference for every
  mask type. The Pallas tests come last: they are the slowest.
- entry point / options: dispatch strings, shape validation, option validation boundaries,
  defaults, and the target platform.
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from seaweed_jax import kernels
from seaweed_jax.kernels import cudnn, masks, options, reference, splash
from seaweed_jax.kernels import AttentionOptions, KeyPaddingMask, SegmentMask, VideoWindowMask, window_bounds
from seaweed_jax.parallel import make_mesh
from seaweed_jax.parallel.rules import DEFAULT_RULES

# B, H and Dh all differ so a swapped axis or a wrong shape index cannot go unnoticed.
B, H, DH = 2, 3, 4
BLOCK_128 = AttentionOptions(block_q=128, block_kv=128)
TEXT_VALID = np.array([[1, 1, 0], [1, 0, 0]], bool)

# Hand-written per-axis window index of each coordinate (larger windows first), for the grids
# used below: (grid, windows, (t windows, h windows, w windows)).
UNEVEN = ((5, 3, 4), (4, 2, 3), ([0, 0, 1, 2, 3], [0, 0, 1], [0, 0, 1, 2]))
SMALL_UNEVEN = ((3, 3, 3), (2, 2, 2), ([0, 0, 1], [0, 0, 1], [0, 0, 1]))
DIVIDING = ((2, 4, 6), (1, 2, 3), ([0, 0], [0, 0, 1, 1], [0, 0, 1, 1, 2, 2]))
TIME_ONLY = ((5, 2, 3), (4, 1, 1), ([0, 0, 1, 2, 3], [0, 0], [0, 0, 0]))
CLAMPED = ((2, 3, 1), (5, 2, 4), ([0, 1], [0, 0, 1], [0]))   # windows clamp to (2, 2, 1)


# --------------------------------------------------------------------------- independent references

def window_labels(axis_windows):
    """(Nv,) int label of each video token in row-major (t, h, w) order: equal labels iff the
    tokens share their window on every axis."""
    t_ids, h_ids, w_ids = axis_windows
    triples = [(a, b, c) for a in t_ids for b in h_ids for c in w_ids]
    order = {triple: i for i, triple in enumerate(sorted(set(triples)))}  # windows row-major
    return np.array([order[t] for t in triples])


def video_window_allowed(axis_windows, key_valid):
    """(B, N, N) from the definition: a video query sees the video keys of its own window and
    every valid text key; a text query sees every valid key."""
    labels = window_labels(axis_windows)
    nv, n = labels.size, key_valid.shape[1]
    structure = np.ones((n, n), bool)
    for i in range(nv):
        for j in range(nv):
            structure[i, j] = labels[i] == labels[j]
    return structure[None] & np.asarray(key_valid)[:, None, :]


def segment_allowed(segment):
    segment = np.asarray(segment)
    bsz, n = segment.shape
    allowed = np.zeros((bsz, n, n), bool)
    for b in range(bsz):
        for i in range(n):
            for j in range(n):
                allowed[b, i, j] = segment[b, i] == segment[b, j]
    return allowed


def softmax_attention(q, k, v, allowed, scale):
    """float64 softmax(q k^T * scale + mask) v; allowed (B, Nq, Nk). A row with no allowed key
    gets uniform weights over all keys (what the reference's finite mask value gives)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    allowed = np.broadcast_to(np.asarray(allowed, bool)[:, None], logits.shape)
    empty = ~allowed.any(-1, keepdims=True)
    logits = np.where(empty, 0.0, np.where(allowed, logits, -np.inf))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def random_qkv(n, seed, nk=None):
    rng = np.random.default_rng(seed)
    nk = n if nk is None else nk
    return (rng.standard_normal((B, n, H, DH)).astype(np.float32),
            rng.standard_normal((B, nk, H, DH)).astype(np.float32),
            rng.standard_normal((B, nk, H, DH)).astype(np.float32))


def joint_key_valid(nv, text_valid=TEXT_VALID):
    return np.concatenate([np.ones((B, nv), bool), text_valid], axis=1)


def window_token_lists(axis_windows):
    """Video token ids of each window (windows row-major, tokens row-major inside)."""
    labels = window_labels(axis_windows)
    return [list(np.flatnonzero(labels == w)) for w in range(labels.max() + 1)]


# One compiled program per call signature instead of dozens of eagerly dispatched ops.
xla_attention = jax.jit(lambda q, k, v, mask, scale: kernels.attention(q, k, v, mask=mask, scale=scale))


def assert_close(got, want, tol=1e-5):
    got = np.asarray(got)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- options, platform, entry point

def test_attention_options_defaults_and_block_validation():
    assert options.LANE == 128
    default = AttentionOptions()
    assert (default.block_q, default.block_kv, default.interpret) == (512, 512, None)
    AttentionOptions(block_q=128, block_kv=128)          # the smallest valid block: one lane
    AttentionOptions(block_q=256, block_kv=384, interpret=True)
    # Each clause of the check on its own: not an int, below a lane, not a lane multiple.
    for bad in (128.0, -128, 0, 64, 129, 200):
        with pytest.raises(ValueError):
            AttentionOptions(block_q=bad, block_kv=128)
        with pytest.raises(ValueError):
            AttentionOptions(block_q=128, block_kv=bad)
    # Frozen (so hashable, usable as a static jit argument).
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.block_q = 128
    assert hash(default) == hash(AttentionOptions()) and default == AttentionOptions()


def test_target_platform_reads_the_mesh_device_then_the_default_backend():
    assert options.target_platform() == jax.default_backend() == "cpu"
    tpu = jax.sharding.AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",), abstract_device=tpu)):
        assert options.target_platform() == "tpu"
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",))):  # no device: default
        assert options.target_platform() == "cpu"


def test_backend_registry_and_public_names():
    assert kernels.BACKENDS["xla"] is reference.attention
    assert kernels.BACKENDS["splash"] is splash.attention
    assert kernels.BACKENDS["cudnn"] is cudnn.attention
    assert sorted(kernels.__all__) == sorted(["attention", "register_backend", "BACKENDS", "AttentionOptions",
                                              "KeyPaddingMask", "SegmentMask", "VideoWindowMask",
                                              "target_platform", "window_bounds"])
    for name in kernels.__all__:
        assert hasattr(kernels, name), name


def test_entry_point_validates_shapes_and_forwards_every_argument():
    calls = []

    def spy(q, k, v, mask, *, scale, options):
        calls.append((q.shape, k.shape, v.shape, mask, scale, options))
        return "spied"

    q, k, v = (jnp.zeros(s) for s in ((2, 5, 3, 4), (2, 7, 3, 4), (2, 7, 3, 4)))
    bad_inputs = [
        (q[0], k, v), (q, k[0], v), (q, k, v[0]),                               # each rank on its own
        (q, k, v[:, :6]),                                                        # k and v differ
        (jnp.zeros((3, 5, 3, 4)), k, v),                                         # batch differs
        (jnp.zeros((2, 5, 2, 4)), k, v),                                         # heads differ
        (jnp.zeros((2, 5, 3, 5)), k, v),                                         # head_dim differs
    ]
    kernels.register_backend("spy_backend", spy)
    try:
        opts, mask = AttentionOptions(block_q=256), KeyPaddingMask(jnp.ones((2, 7), bool))
        # Cross-attention (Nq != Nk, and N != B) is valid.
        assert kernels.attention(q, k, v, mask=mask, backend="spy_backend", scale=0.25, options=opts) == "spied"
        assert calls[-1] == ((2, 5, 3, 4), (2, 7, 3, 4), (2, 7, 3, 4), mask, 0.25, opts)
        assert kernels.attention(q, k, v, backend="spy_backend") == "spied"
        assert calls[-1][3:] == (None, None, None)   # mask, scale and options default to None
        # The checks run before dispatch (the spy backend would accept anything).
        for args in bad_inputs:
            with pytest.raises(ValueError, match=r"\(B, N, H, Dh\)|shapes disagree"):
                kernels.attention(*args, backend="spy_backend")
        assert len(calls) == 2
    finally:
        kernels.BACKENDS.pop("spy_backend")
    with pytest.raises(ValueError, match="unknown attention backend"):
        kernels.attention(q, k, v, backend="XXxlaXX")
    with pytest.raises(ValueError, match="NVIDIA GPU"):   # "cudnn" reaches its backend (CPU here)
        kernels.attention(q, k, v, backend="cudnn")


# --------------------------------------------------------------------------- masks

def test_window_bounds_edges_and_validation():
    assert window_bounds(1, 1) == [(0, 1)]
    assert window_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert window_bounds(6, 4) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert window_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert window_bounds(2, 5) == [(0, 1), (1, 2)]
    assert window_bounds(6, 3) == [(0, 2), (2, 4), (4, 6)]
    for size, count in ((0, 1), (1, 0), (0, 0), (-1, 2), (3, -1)):
        with pytest.raises(ValueError):
            window_bounds(size, count)


def test_key_padding_and_segment_dense_masks_by_hand():
    key_valid = jnp.asarray([[1, 1, 0, 1], [0, 0, 0, 1]], bool)
    dense = np.asarray(KeyPaddingMask(key_valid).dense(9))   # the query count does not matter
    assert dense.shape == (2, 1, 1, 4)
    np.testing.assert_array_equal(dense[:, 0, 0], np.asarray(key_valid))
    segment = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 2, 3, 0, 0]])
    got = np.asarray(SegmentMask(jnp.asarray(segment)).dense(6))
    assert got.shape == (2, 1, 6, 6)
    np.testing.assert_array_equal(got[:, 0], segment_allowed(segment))
    for wrong in (5, 7):
        with pytest.raises(ValueError):
            SegmentMask(jnp.asarray(segment)).dense(wrong)


def test_masks_are_frozen_pytrees_with_static_geometry():
    key_valid = jnp.ones((1, 6), bool)
    segment = jnp.ones((1, 6), jnp.int32)
    for mask, field, array in ((KeyPaddingMask(key_valid), "key_valid", key_valid),
                               (SegmentMask(segment), "segment", segment),
                               (VideoWindowMask(key_valid, grid=(2, 3, 1), windows=(2, 2, 1)), "key_valid", key_valid)):
        leaves, treedef = jax.tree_util.tree_flatten(mask)
        assert len(leaves) == 1 and leaves[0] is array   # grid / windows live in the treedef
        rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
        assert type(rebuilt) is type(mask)
        if isinstance(mask, VideoWindowMask):
            assert (rebuilt.grid, rebuilt.windows) == ((2, 3, 1), (2, 2, 1))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(mask, field, array)


def test_video_window_mask_normalises_and_validates_its_geometry():
    default = VideoWindowMask(jnp.ones((1, 1), bool))
    assert (default.grid, default.windows) == ((1, 1, 1), (1, 1, 1))
    # Lists and numpy ints become tuples of python ints; windows clamp to the grid per axis.
    spec = VideoWindowMask(jnp.ones((1, 6), bool), grid=[np.int64(2), 3, 1], windows=[5, np.int32(2), 4])
    assert spec.grid == (2, 3, 1) and spec.windows == (2, 2, 1)
    assert all(type(g) is int for g in spec.grid + spec.windows)
    grid, windows, _ = UNEVEN
    spec = VideoWindowMask(jnp.ones((1, 60), bool), grid=grid, windows=windows)
    assert (spec.num_video, spec.num_windows, spec.window_size) == (60, 24, 2 * 2 * 2)
    assert not spec.divides
    assert VideoWindowMask(jnp.ones((1, 48), bool), grid=(2, 4, 6), windows=(1, 2, 3)).window_size == 2 * 2 * 2
    assert VideoWindowMask(jnp.ones((1, 48), bool), grid=(2, 4, 6), windows=(1, 2, 3)).divides
    for uneven_axis in ((3, 1, 1), (1, 3, 1), (1, 1, 3)):   # one axis that does not divide is enough
        assert not VideoWindowMask(jnp.ones((1, 64), bool), grid=(4, 4, 4), windows=uneven_axis).divides
    # Validation, one condition at a time; windows (1, 1, 1) is the valid boundary.
    VideoWindowMask(jnp.ones((1, 8), bool), grid=(2, 2, 2), windows=(1, 1, 1))
    for bad_grid, bad_windows in (((2, 2, 2, 2), (1, 1, 1)),    # 4 grid sizes only
                                  ((2, 2, 2), (1, 1)),          # 2 window counts only
                                  ((2, 2, 2), (1, 1, 0)),       # a zero count only
                                  ((2, 2, 2), (-1, 1, 1)),
                                  ((0, 2, 2), (1, 1, 1))):      # an empty axis clamps its count to 0
        with pytest.raises(ValueError):
            VideoWindowMask(jnp.ones((1, 8), bool), grid=bad_grid, windows=bad_windows)


@pytest.mark.parametrize("case", [UNEVEN, SMALL_UNEVEN, DIVIDING, TIME_ONLY, CLAMPED])
def test_window_ids_follow_the_thw_coordinates(case):
    grid, windows, axis_windows = case
    spec = VideoWindowMask(jnp.ones((1, int(np.prod(grid))), bool), grid=grid, windows=windows)
    np.testing.assert_array_equal(spec.window_ids(), window_labels(axis_windows))


def test_gather_tables_by_hand_and_cached():
    grid, windows, axis_windows = UNEVEN
    spec = VideoWindowMask(jnp.ones((1, 60), bool), grid=grid, windows=windows)
    index, valid, inverse = spec.window_tokens()
    tokens = window_token_lists(axis_windows)
    size = max(len(t) for t in tokens)
    assert size == spec.window_size == 8 and index.shape == valid.shape == (24, 8)
    for w, toks in enumerate(tokens):
        np.testing.assert_array_equal(index[w, :len(toks)], toks)
        assert (index[w, len(toks):] == 0).all()            # padding slots point at token 0
        np.testing.assert_array_equal(valid[w], np.arange(size) < len(toks))
        for slot, token in enumerate(toks):
            assert inverse[token] == w * size + slot
    assert sorted(inverse.tolist()) == sorted(w * size + s for w, t in enumerate(tokens) for s in range(len(t)))
    # Built once per layer shape.
    assert spec.window_tokens()[0] is index
    assert masks._window_tables.cache_parameters()["maxsize"] == 64


@pytest.mark.parametrize("case", [DIVIDING, UNEVEN])
def test_to_and_from_windows_by_hand(case):
    grid, windows, axis_windows = case
    nv = int(np.prod(grid))
    spec = VideoWindowMask(jnp.ones((1, nv), bool), grid=grid, windows=windows)
    x = np.arange(B * nv * 2 * 3, dtype=np.float32).reshape(B, nv, 2, 3)  # trailing dims ride along
    tokens = window_token_lists(axis_windows)
    size = max(len(t) for t in tokens)
    want = np.stack([x[:, t + [0] * (size - len(t))] for t in tokens], axis=1)  # pad with token 0
    got = np.asarray(masks.to_windows(jnp.asarray(x), spec))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(masks.from_windows(jnp.asarray(want), spec), x)


@pytest.mark.parametrize("case", [UNEVEN, DIVIDING, TIME_ONLY, CLAMPED])
def test_video_window_dense_mask_by_hand(case):
    grid, windows, axis_windows = case
    nv = int(np.prod(grid))
    key_valid = joint_key_valid(nv)
    spec = VideoWindowMask(jnp.asarray(key_valid), grid=grid, windows=windows)
    dense = np.asarray(spec.dense(nv + 3))
    assert dense.shape == (B, 1, nv + 3, nv + 3)
    np.testing.assert_array_equal(dense[:, 0], video_window_allowed(axis_windows, key_valid))
    for wrong in (nv + 2, nv + 4):
        with pytest.raises(ValueError):
            spec.dense(wrong)


# --------------------------------------------------------------------------- splash geometry (no Pallas)

def test_splash_length_helpers():
    window = lambda w: VideoWindowMask(jnp.ones((1, 64), bool), grid=(4, 4, 4), windows=w)
    assert splash._time_only(window((4, 1, 1))) and splash._time_only(window((1, 1, 1)))
    assert not splash._time_only(window((1, 2, 1)))
    assert not splash._time_only(window((1, 1, 2)))
    assert not splash._time_only(window((2, 2, 2)))
    assert [splash._round_up(n, 128) for n in (0, 1, 127, 128, 129, 256)] == [0, 128, 128, 128, 256, 256]
    uneven = AttentionOptions(block_q=256, block_kv=384)   # lcm 768, not the product or the max
    assert [splash.padded_length(n, uneven) for n in (1, 768, 769)] == [768, 768, 1536]
    assert splash.padded_length(200, BLOCK_128) == 256


def _hand_kernel_mask(labels, length, video_positions):
    """(L, L): positions [0, video_positions) carry window labels; a pair is allowed if both are
    video positions of one window or either is not a video position."""
    full = np.ones((length, length), bool)
    nv = video_positions
    full[:nv, :nv] = labels[:nv, None] == labels[None, :nv]
    return full


@pytest.mark.parametrize("frames,frame_hw,count", [
    (5, (2, 3), 4),    # windows of 2, 1, 1, 1 frames (base 1)
    (10, (1, 2), 3),   # 4, 3, 3 (base 3: the small windows start mid-way through a stride)
    (8, (1, 2), 3),    # 3, 3, 2 (two large windows)
    (4, (1, 2), 4),    # space layer: a frame per window
    (3, (2, 1), 1),    # one window: everything
])
def test_frame_window_kernel_mask_by_hand(frames, frame_hw, count):
    grid, nt = (frames, *frame_hw), 3
    nv = int(np.prod(grid))
    spec = VideoWindowMask(jnp.asarray(joint_key_valid(nv)), grid=grid, windows=(count, 1, 1))
    kernel = splash.kernel_mask(spec, nv + nt, BLOCK_128)
    assert isinstance(kernel, splash.FrameWindowMask) and kernel.shape == (128, 128)
    frame_window = np.concatenate([[w] * (b - a) for w, (a, b) in enumerate(window_bounds(frames, count))])
    labels = np.repeat(frame_window, frame_hw[0] * frame_hw[1])   # row-major: a frame is contiguous
    np.testing.assert_array_equal(kernel[:, :], _hand_kernel_mask(labels, 128, nv))
    # On the joint tokens it is the structure of the dense mask (key validity comes from segments).
    structure = video_window_allowed(([*frame_window], [0] * frame_hw[0], [0] * frame_hw[1]),
                                     np.ones((1, nv + nt), bool))[0]
    np.testing.assert_array_equal(kernel[:nv + nt, :nv + nt], structure)


def test_window_slot_kernel_mask_by_hand():
    grid, windows, axis_windows = UNEVEN          # 24 windows of up to 8 tokens: 192 slots
    nv, nt = 60, 3
    spec = VideoWindowMask(jnp.asarray(joint_key_valid(nv)), grid=grid, windows=windows)
    kernel = splash.kernel_mask(spec, nv + nt, BLOCK_128)
    assert isinstance(kernel, splash.WindowSlotMask)
    assert kernel.shape == (256, 256)             # 192 slots + 3 text -> 195 -> 256
    assert (kernel.slot_size, kernel.video_slots) == (8, 192)
    labels = np.repeat(np.arange(24), 8)
    np.testing.assert_array_equal(kernel[:, :], _hand_kernel_mask(labels, 256, 192))
    np.testing.assert_array_equal(kernel[100:140, 180:200], _hand_kernel_mask(labels, 256, 192)[100:140, 180:200])
    # No structure: a full (L, L) mask.
    for mask in (None, KeyPaddingMask(jnp.ones((B, 130), bool)), SegmentMask(jnp.ones((B, 130), jnp.int32))):
        full = splash.kernel_mask(mask, 130, BLOCK_128)
        assert isinstance(full, splash_mask.FullMask) and full.shape == (256, 256)


def test_kernel_masks_compare_by_geometry():
    slot = splash.WindowSlotMask(256, 8, 192)
    assert slot == splash.WindowSlotMask(256, 8, 192) and hash(slot) == hash(splash.WindowSlotMask(256, 8, 192))
    for other in (splash.WindowSlotMask(384, 8, 192), splash.WindowSlotMask(256, 4, 192),
                  splash.WindowSlotMask(256, 8, 96), splash_mask.FullMask((256, 256))):
        assert not slot == other
    frame = splash.FrameWindowMask(128, 6, 5, 4, 30)
    assert frame == splash.FrameWindowMask(128, 6, 5, 4, 30)
    assert hash(frame) == hash(splash.FrameWindowMask(128, 6, 5, 4, 30))
    for other in (splash.FrameWindowMask(256, 6, 5, 4, 30), splash.FrameWindowMask(128, 3, 5, 4, 30),
                  splash.FrameWindowMask(128, 6, 5, 4, 24), splash.FrameWindowMask(128, 6, 5, 3, 30),
                  splash.FrameWindowMask(128, 6, 5, 5, 30), slot, splash_mask.FullMask((128, 128))):
        assert not frame == other


def _hand_block_count(allowed, block_q, block_kv):
    nq, nk = allowed.shape[0] // block_q, allowed.shape[1] // block_kv
    return int(allowed.reshape(nq, block_q, nk, block_kv).any(axis=(1, 3)).sum()), nq * nk


def test_block_counts_by_hand():
    # Two windows of exactly 128 slots + 5 text: of the 3 x 3 blocks the two cross-window ones are empty.
    nv, nt = 256, 5
    spec = VideoWindowMask(jnp.ones((1, nv + nt), bool), grid=(2, 8, 16), windows=(1, 2, 1))
    labels = np.repeat(np.arange(2), 128)
    counts = splash.block_counts(spec, nv + nt, BLOCK_128)
    assert counts == _hand_block_count(_hand_kernel_mask(labels, 384, 256), 128, 128) == (7, 9)
    assert all(type(c) is int for c in counts)
    # Frames of 128 tokens, a window per frame, rectangular blocks (q 256, kv 128): 7 of 8.
    nv = 384
    spec = VideoWindowMask(jnp.ones((1, nv + nt), bool), grid=(3, 8, 16), windows=(3, 1, 1))
    rect = AttentionOptions(block_q=256, block_kv=128)
    counts = splash.block_counts(spec, nv + nt, rect)
    assert counts == _hand_block_count(_hand_kernel_mask(np.repeat(np.arange(3), 128), 512, nv), 256, 128) == (7, 8)
    assert all(type(c) is int for c in counts)
    assert splash.block_counts(KeyPaddingMask(jnp.ones((1, 130), bool)), 130, rect) == (2, 2)  # 256: 1 x 2 blocks


def test_key_segments_and_kernel_token_order_by_hand():
    key_valid = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], bool)
    seg = splash._key_segments(jnp.asarray(key_valid))
    np.testing.assert_array_equal(seg.q, np.zeros((2, 4)))
    np.testing.assert_array_equal(seg.kv, np.where(key_valid, 0, 1))
    assert seg.kv.dtype == jnp.int32 and (seg.q_pad, seg.kv_pad) == (0, 1)

    # No mask: everything valid, order unchanged, restore is the identity.
    q, k, v = (jnp.asarray(a) for a in random_qkv(7, seed=1))
    q2, k2, v2, seg, restore = splash._to_kernel_order(q, k, v, None)
    assert q2 is q and k2 is k and v2 is v and restore(q) is q
    np.testing.assert_array_equal(seg.kv, np.zeros((B, 7)))
    np.testing.assert_array_equal(seg.q, np.zeros((B, 7)))
    assert (seg.q_pad, seg.kv_pad) == (0, 1)

    # Packed samples: ids pass straight through; the tail gets a segment of its own.
    segment = np.array([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 2, 2, 2]])
    q2, _, _, seg, restore = splash._to_kernel_order(q, k, v, SegmentMask(jnp.asarray(segment)))
    assert q2 is q and restore(q) is q
    np.testing.assert_array_equal(seg.q, segment)
    np.testing.assert_array_equal(seg.kv, segment)
    assert seg.q.dtype == jnp.int32 and (seg.q_pad, seg.kv_pad) == (-1, -1)

    # Key padding and time-only windows: row-major order, key validity as kv segments.
    kv = joint_key_valid(4)
    grid, windows, _ = TIME_ONLY
    time_only = VideoWindowMask(jnp.asarray(joint_key_valid(30)), grid=grid, windows=windows)
    for mask, n, valid in ((KeyPaddingMask(jnp.asarray(kv)), 7, kv), (time_only, 33, joint_key_valid(30))):
        qn, kn, vn = (jnp.asarray(a) for a in random_qkv(n, seed=2))
        q2, k2, v2, seg, restore = splash._to_kernel_order(qn, kn, vn, mask)
        assert q2 is qn and k2 is kn and v2 is vn and restore(qn) is qn
        np.testing.assert_array_equal(seg.kv, np.where(valid, 0, 1))
        np.testing.assert_array_equal(seg.q, np.zeros_like(valid))


@pytest.mark.parametrize("case", [SMALL_UNEVEN, DIVIDING])
def test_general_windows_go_window_major_with_padded_slots_hidden(case):
    grid, windows, axis_windows = case
    nv = int(np.prod(grid))
    spec = VideoWindowMask(jnp.asarray(joint_key_valid(nv)), grid=grid, windows=windows)
    q, k, v = random_qkv(nv + 3, seed=3)
    q2, k2, v2, seg, restore = splash._to_kernel_order(*(jnp.asarray(a) for a in (q, k, v)), spec)
    tokens = window_token_lists(axis_windows)
    size = max(len(t) for t in tokens)
    order = [t for toks in tokens for t in toks + [0] * (size - len(toks))] + list(range(nv, nv + 3))
    for got, x in ((q2, q), (k2, k), (v2, v)):
        np.testing.assert_array_equal(got, x[:, order])
    slot_valid = [s < len(toks) for toks in tokens for s in range(size)]
    want_kv = np.where(np.concatenate([np.broadcast_to(slot_valid, (B, len(slot_valid))), TEXT_VALID], 1), 0, 1)
    np.testing.assert_array_equal(seg.kv, want_kv)
    np.testing.assert_array_equal(seg.q, np.zeros_like(want_kv))
    assert (seg.q_pad, seg.kv_pad) == (0, 1)
    np.testing.assert_array_equal(restore(q2), q)


def test_kernel_order_validation():
    grid, windows, _ = SMALL_UNEVEN
    for windows in (windows, (3, 1, 1)):
        spec = VideoWindowMask(jnp.ones((B, 27), bool), grid=grid, windows=windows)
        q, k, v = (jnp.asarray(a) for a in random_qkv(27, seed=4))
        assert splash._to_kernel_order(q, k, v, spec)[0].shape[1] >= 27      # video only: valid
        with pytest.raises(ValueError):
            splash._to_kernel_order(q[:, :26], k[:, :26], v[:, :26], spec)   # fewer tokens than video
    with pytest.raises(ValueError, match="structured mask"):
        splash._to_kernel_order(q, k, v, jnp.ones((B, 1, 27, 27), bool))


def test_mesh_specs_follow_the_logical_rules():
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 2, "tensor": 2}}), devices=jax.devices()[:4])
    split = (P(("data", "fsdp"), None, ("tensor", "context"), None), P(("data", "fsdp"), None))
    replicated = (P(None, None, None, None), P(None, None))
    with nn.logical_axis_rules(DEFAULT_RULES):
        assert splash._mesh_specs(mesh, 2, 2) == split
        assert splash._mesh_specs(mesh, 3, 3) == replicated        # neither splits over 2 devices
        assert splash._mesh_specs(mesh, 4, 3)[0] == P(("data", "fsdp"), None, None, None)
    assert splash._mesh_specs(mesh, 2, 2) == split                 # no rules in scope: the defaults
    with nn.logical_axis_rules((("batch", "data"), ("heads", "tensor"))):   # no attn_heads rule
        assert splash._mesh_specs(mesh, 2, 2) == (P("data", None, "tensor", None), P("data", None))


def test_splash_kernel_settings_and_interpret_choice(monkeypatch):
    """make_splash_mha is replaced by a spy that records its arguments and stops: no Pallas run."""
    calls = []

    class Stop(Exception):
        pass

    def spy(mask, **kwargs):
        calls.append((mask, kwargs))
        raise Stop

    monkeypatch.setattr(splash.splash_kernel, "make_splash_mha", spy)
    q, k, v = (jnp.asarray(a) for a in random_qkv(10, seed=5))

    def settings(opts=None, platform=None):
        if platform is not None:
            monkeypatch.setattr(splash, "target_platform", lambda: platform)
        with pytest.raises(Stop):
            splash.attention(q, k, v, None, options=opts) if opts is not None else splash.attention(q, k, v)
        return calls[-1]

    mask, kw = settings()
    assert kw["interpret"] is True                                   # CPU: interpret mode
    assert kw["block_sizes"].block_q == kw["block_sizes"].block_kv == 512
    assert isinstance(mask, splash_mask.MultiHeadMask) and len(mask.masks) == H
    assert all(m == splash_mask.FullMask((512, 512)) for m in mask.masks)
    assert (kw["head_shards"], kw["q_seq_shards"], kw["residual_checkpoint_name"]) == (1, 1, "attn_out")
    _, kw = settings(AttentionOptions(block_q=256, block_kv=384))
    bs = kw["block_sizes"]
    assert (bs.block_q, bs.block_kv, bs.block_kv_compute, bs.block_q_dkv, bs.block_kv_dkv,
            bs.block_kv_dkv_compute, bs.block_q_dq, bs.block_kv_dq) == (256, 384, 384, 256, 384, 384, 256, 384)
    assert settings(AttentionOptions(interpret=False))[1]["interpret"] is False   # forced, even on CPU
    assert settings(platform="tpu")[1]["interpret"] is False                       # TPU: the real kernel
    assert settings(AttentionOptions(interpret=True), platform="tpu")[1]["interpret"] is True


# --------------------------------------------------------------------------- reference (xla) attention

def test_reference_attention_scale_masking_and_fully_masked_rows():
    q, k, v = random_qkv(5, seed=6, nk=7)    # cross-attention: Nq != Nk, and H != Dh
    # All defaults omitted: no mask, backend xla, scale 1/sqrt(Dh).
    assert_close(kernels.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)),
                 softmax_attention(q, k, v, np.ones((B, 5, 7), bool), DH ** -0.5))
    allowed = np.random.default_rng(7).random((B, 5, 7)) < 0.5
    allowed[0, 1] = False                    # a fully masked row: uniform weights, not NaN
    allowed[1, 3] = False
    allowed[1, 4] = [0, 0, 0, 0, 0, 0, 1]    # a single key: exactly v of that key
    k_big = k.copy()
    k_big[:, 2] *= 40.0                      # masked keys with huge logits still get no weight
    for scale in (None, 0.37):
        got = np.asarray(reference.dot_product_attention(jnp.asarray(q), jnp.asarray(k_big), jnp.asarray(v),
                                                         jnp.asarray(allowed)[:, None], scale=scale))
        assert_close(got, softmax_attention(q, k_big, v, allowed, DH ** -0.5 if scale is None else scale))
        assert_close(got[0, 1], np.broadcast_to(v[0].mean(0), (H, DH)))
        assert_close(got[1, 4], v[1, 6])


def test_reference_attention_every_mask_type_by_hand():
    attend = lambda q, k, v, mask, scale=None: xla_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, scale)
    # Key padding, one example with every key padded (uniform weights over all keys).
    q, k, v = random_qkv(6, seed=8)
    key_valid = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
    allowed = np.broadcast_to(key_valid[:, None], (B, 6, 6))
    assert_close(attend(q, k, v, KeyPaddingMask(jnp.asarray(key_valid)), 0.37),
                 softmax_attention(q, k, v, allowed, 0.37))
    # Packed samples; padding (0) attends to padding only.
    segment = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 2, 2, 2, 2]])
    assert_close(attend(q, k, v, SegmentMask(jnp.asarray(segment))),
                 softmax_attention(q, k, v, segment_allowed(segment), DH ** -0.5))
    # Dense boolean masks pass straight through.
    dense = np.random.default_rng(9).random((B, 1, 6, 6)) < 0.6
    assert_close(attend(q, k, v, jnp.asarray(dense), 0.37), softmax_attention(q, k, v, dense[:, 0], 0.37))


@pytest.mark.parametrize("case,scale", [(UNEVEN, 0.37), (DIVIDING, None)])  # gather path, reshape path
def test_reference_windowed_attention_by_hand(case, scale):
    grid, windows, axis_windows = case
    nv = int(np.prod(grid))
    key_valid = joint_key_valid(nv)
    spec = VideoWindowMask(jnp.asarray(key_valid), grid=grid, windows=windows)
    q, k, v = random_qkv(nv + 3, seed=10)
    got = xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), spec, scale)
    assert_close(got, softmax_attention(q, k, v, video_window_allowed(axis_windows, key_valid),
                                        DH ** -0.5 if scale is None else scale))


def test_reference_windowed_attention_without_text_and_too_few_tokens():
    grid, windows, axis_windows = SMALL_UNEVEN
    spec = VideoWindowMask(jnp.ones((B, 27), bool), grid=grid, windows=windows)
    q, k, v = random_qkv(27, seed=11)
    assert_close(xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), spec, None),
                 softmax_attention(q, k, v, video_window_allowed(axis_windows, np.ones((B, 27), bool)),
                                   DH ** -0.5))
    with pytest.raises(ValueError):
        reference.windowed_joint_attention(*(jnp.asarray(a[:, :26]) for a in (q, k, v)), spec)


# --------------------------------------------------------------------------- splash (Pallas interpret mode)

def _splash_case(name):
    """(q, k, v, mask, allowed) for one mask type at the tiniest shapes (one 128 block, so every
    case also has tail padding). The no-mask and reshape-path orders, the defaults and the
    kernel settings are pinned above without running Pallas."""
    if name == "key_padding":
        q, k, v = random_qkv(10, seed=12)
        valid = np.ones((B, 10), bool)
        valid[0, [2, 9]] = False
        valid[1, 4:] = False
        return q, k, v, KeyPaddingMask(jnp.asarray(valid)), np.broadcast_to(valid[:, None], (B, 10, 10))
    if name == "segments":   # 13 tokens: a tail of 115 padded positions, which no sample may see
        segment = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0, 0], [1] * 6 + [2] * 7])
        q, k, v = random_qkv(13, seed=13)
        return q, k, v, SegmentMask(jnp.asarray(segment)), segment_allowed(segment)
    grid, windows, axis_windows = {"time_only": TIME_ONLY, "window_uneven": SMALL_UNEVEN}[name]
    nv = int(np.prod(grid))
    key_valid = joint_key_valid(nv)
    q, k, v = random_qkv(nv + 3, seed=14)
    return (q, k, v, VideoWindowMask(jnp.asarray(key_valid), grid=grid, windows=windows),
            video_window_allowed(axis_windows, key_valid))


@pytest.mark.parametrize("name,scale", [("segments", None), ("time_only", None), ("window_uneven", 0.37)])
def test_splash_equals_numpy_for_every_mask_type(name, scale):
    q, k, v, mask, allowed = _splash_case(name)
    got = kernels.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask, backend="splash",
                            scale=scale, options=BLOCK_128)
    assert_close(got, softmax_attention(q, k, v, allowed, DH ** -0.5 if scale is None else scale))


def test_splash_with_every_default():
    """No mask, no scale, no options (512 blocks; interpret mode chosen from the platform)."""
    q, k, v = random_qkv(10, seed=15)
    got = splash.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    assert_close(got, softmax_attention(q, k, v, np.ones((B, 10, 10), bool), DH ** -0.5))


def test_splash_key_padding_under_a_mesh_equals_numpy():
    """shard_map over data=2 x tensor=2 (batch and heads split): the same values."""
    mesh = make_mesh(mc.ConfigDict({"shape": {"data": 2, "tensor": 2}}), devices=jax.devices()[:4])
    q, k, v, mask, allowed = _splash_case("key_padding")
    q, k, v = (a[:, :, :2] for a in (q, k, v))            # 2 heads: they split over tensor=2
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = splash.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, options=BLOCK_128)
    assert_close(got, softmax_attention(q, k, v, allowed, DH ** -0.5))
