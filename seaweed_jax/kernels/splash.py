"""The `splash` backend: JAX's Pallas splash-attention kernel (Mosaic on TPU, interpret mode
elsewhere), block-sparse over the structured masks of `kernels.masks`.

How the joint [video; text] sequence reaches the kernel:
- **Window-major order.** For window layers that split height or width (`VideoWindowMask`,
  e.g. 1x2x2) the video tokens are gathered window by window, each window padded to S slots
  (S = the largest window), then the text tokens follow. A window's queries and keys are then
  contiguous, so every (q block, kv block) pair that lies in two different windows is empty
  and the kernel skips it. In row-major (t, h, w) order almost every block pair would mix
  windows and be computed (99% at the 7B 480p grid, against 31%).
- **Windows over time only** (space layers, 4x1x1) are already contiguous in row-major order:
  the tokens stay where they are, unpadded (padding uneven frame windows to S would cost
  blocks), and the mask computes each token's window from its frame.
- **Padding through segment ids.** The sequence is padded to a multiple of the block sizes.
  Keys nobody may see (padded text, empty window slots, the tail padding) get kv segment 1,
  every query segment 0: no query sees them and no query row is ever empty. Padded query
  rows are cropped on return; padded text queries keep their reference semantics (they see
  every valid key), so the output equals `reference.attention` at every position.
- **Packed sequences** (`SegmentMask`) pass their sample ids straight through as q and kv
  segment ids (padding is segment 0 and sees only padding): full attention inside each sample.
- **shard_map.** A Mosaic kernel cannot be auto-partitioned, so the call runs under
  `jax.shard_map` over the active mesh with batch and heads sharded by the logical-axis rules
  (`batch`, `attn_heads`); the sequence is whole on each device: under Ulysses context
  parallelism the model's all-to-all has already traded sequence sharding for head sharding.
- **interpret.** `AttentionOptions.interpret=None` runs the real kernel when the mesh (or, with
  no mesh, the default backend) is on TPU and interpret mode everywhere else.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mask_info
from jax.sharding import PartitionSpec as P

from seaweed_jax.kernels.masks import KeyPaddingMask, SegmentMask, VideoWindowMask, from_windows, to_windows
from seaweed_jax.kernels.options import AttentionOptions, target_platform
from seaweed_jax.parallel.rules import DEFAULT_RULES, mesh_axes_size


class WindowSlotMask(splash_mask._ComputableMask):  # the kernel evaluates mask_function per block
    """(L, L) mask over the window-major layout.

    Positions [0, video_slots) are windows of `slot_size` slots each; a video query sees the
    slots of its own window. Every pair with a text (or tail padding) query or key is allowed
    (segment ids remove the padding). Computed in the kernel from indices: nothing of size L^2
    is stored.
    """

    def __init__(self, length: int, slot_size: int, video_slots: int):
        self.slot_size, self.video_slots = int(slot_size), int(video_slots)

        def window_mask(q_ids, kv_ids):
            same_window = (q_ids // self.slot_size) == (kv_ids // self.slot_size)
            return same_window | (q_ids >= self.video_slots) | (kv_ids >= self.video_slots)

        super().__init__(shape=(length, length), mask_function=window_mask)

    def __eq__(self, other):
        return (isinstance(other, WindowSlotMask) and self.shape == other.shape
                and (self.slot_size, self.video_slots) == (other.slot_size, other.video_slots))

    def __hash__(self):
        return hash((WindowSlotMask, self.shape, self.slot_size, self.video_slots))


class FrameWindowMask(splash_mask._ComputableMask):
    """(L, L) mask over row-major [video; text] for windows that split time only.

    The first `num_video` positions are frames of `frame_tokens` tokens; the frames form
    `window_bounds(frames, count)` windows (the larger ones first): `first` windows of
    `base + 1` frames, then windows of `base` frames. A video query sees the video keys of
    its window; text (and tail padding) queries and keys are unrestricted.
    """

    def __init__(self, length: int, frame_tokens: int, frames: int, count: int, num_video: int):
        self.frame_tokens, self.num_video = int(frame_tokens), int(num_video)
        self.base, self.first = divmod(int(frames), int(count))
        cut = self.first * (self.base + 1)  # frames in the larger windows

        def window_of(ids):
            frame = ids // self.frame_tokens
            in_large = (frame < cut).astype(ids.dtype)
            # Integer arithmetic only (no where/lookup): the same code runs on numpy block
            # slices when the block map is built and on index vectors inside the kernel.
            return in_large * (frame // (self.base + 1)) + (1 - in_large) * (
                self.first + (frame - cut) // max(self.base, 1))

        def frame_window_mask(q_ids, kv_ids):
            same_window = window_of(q_ids) == window_of(kv_ids)
            return same_window | (q_ids >= self.num_video) | (kv_ids >= self.num_video)

        super().__init__(shape=(length, length), mask_function=frame_window_mask)

    def _key(self):
        return (FrameWindowMask, self.shape, self.frame_tokens, self.num_video, self.base, self.first)

    def __eq__(self, other):
        return isinstance(other, FrameWindowMask) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


def _time_only(mask: VideoWindowMask) -> bool:
    return mask.windows[1] == 1 and mask.windows[2] == 1


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_length(num_tokens: int, options: AttentionOptions) -> int:
    """The kernel's sequence length: `num_tokens` padded to a multiple of both block sizes."""
    return _round_up(num_tokens, math.lcm(options.block_q, options.block_kv))


def kernel_mask(mask, num_tokens: int, options: AttentionOptions) -> splash_mask.Mask:
    """The (L, L) splash mask for a structured mask over `num_tokens` joint tokens, in the
    kernel's token order (see the module docstring)."""
    if isinstance(mask, VideoWindowMask) and _time_only(mask):
        t, h, w = mask.grid
        return FrameWindowMask(padded_length(num_tokens, options), h * w, t, mask.windows[0],
                               mask.num_video)
    if isinstance(mask, VideoWindowMask):
        slots = mask.num_windows * mask.window_size
        length = padded_length(slots + num_tokens - mask.num_video, options)
        return WindowSlotMask(length, mask.window_size, slots)
    length = padded_length(num_tokens, options)
    return splash_mask.FullMask((length, length))


def block_counts(mask, num_tokens: int, options: AttentionOptions) -> tuple[int, int]:
    """(blocks the forward kernel computes, all blocks) for one head: read from the kernel's
    own block map (MaskInfo), the same one `attention` builds."""
    m = kernel_mask(mask, num_tokens, options)
    info, _ = mask_info.process_mask(splash_mask.MultiHeadMask((m,)), (options.block_q, options.block_kv))
    block_mask = np.asarray(info.block_mask)[0]
    total = (m.shape[0] // options.block_q) * (m.shape[1] // options.block_kv)
    return int(np.count_nonzero(block_mask)), total


def _block_sizes(options: AttentionOptions) -> splash_kernel.BlockSizes:
    bq, bkv = options.block_q, options.block_kv
    return splash_kernel.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                                    block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                                    block_q_dq=bq, block_kv_dq=bkv)


class Segments(NamedTuple):
    """Segment ids for the kernel (B, N) and the ids its tail padding gets."""
    q: jax.Array
    kv: jax.Array
    q_pad: int
    kv_pad: int


def _key_segments(key_valid) -> Segments:
    """Key-validity masks: every query in segment 0, invalid keys (and the tail) in 1."""
    kv = jnp.where(key_valid, 0, 1).astype(jnp.int32)
    return Segments(jnp.zeros_like(kv), kv, 0, 1)


def _to_kernel_order(q, k, v, mask):
    """Reorder to the kernel's layout. Returns (q, k, v, segments, restore) where restore maps
    the kernel-order output (cropped to the unpadded length) back to the caller's order."""
    b, n = q.shape[:2]
    same = lambda out: out
    if mask is None:
        return q, k, v, _key_segments(jnp.ones((b, n), bool)), same
    if isinstance(mask, SegmentMask):  # packing: padding (segment 0) sees only padding
        segment = mask.segment.astype(jnp.int32)
        return q, k, v, Segments(segment, segment, -1, -1), same  # the tail: a segment of its own
    if isinstance(mask, VideoWindowMask) and n < mask.num_video:
        raise ValueError(f"splash attention: {n} tokens but the video grid {mask.grid} has {mask.num_video}")
    if isinstance(mask, KeyPaddingMask) or (isinstance(mask, VideoWindowMask) and _time_only(mask)):
        return q, k, v, _key_segments(mask.key_valid), same
    if not isinstance(mask, VideoWindowMask):
        raise ValueError("attention_backend='splash' takes a structured mask (kernels.masks."
                         "KeyPaddingMask / VideoWindowMask / SegmentMask) or None, not a dense boolean "
                         "array: its block sparsity must be known when tracing; use backend='xla' for "
                         "dense masks")
    nv, slots = mask.num_video, mask.num_windows * mask.window_size

    def reorder(a):
        windows = to_windows(a[:, :nv], mask)
        return jnp.concatenate([windows.reshape(b, slots, *a.shape[2:]), a[:, nv:]], axis=1)

    if mask.divides:
        slot_valid = jnp.ones((slots,), bool)
    else:
        slot_valid = jnp.asarray(mask.window_tokens()[1].reshape(-1))
    key_valid = jnp.concatenate([jnp.broadcast_to(slot_valid, (b, slots)), mask.key_valid[:, nv:]], 1)

    def restore(out):
        video = from_windows(out[:, :slots].reshape(b, mask.num_windows, mask.window_size,
                                                    *out.shape[2:]), mask)
        return jnp.concatenate([video, out[:, slots:]], axis=1)

    return reorder(q), reorder(k), reorder(v), _key_segments(key_valid), restore


def _mesh_specs(mesh, batch: int, heads: int):
    """(q/k/v spec, segment-id spec) for shard_map from the logical rules (`batch`, and
    `attn_heads`: the heads inside attention, over tensor x context under Ulysses).

    A dimension that does not split over its mesh axes (e.g. batch 1 at init or when sampling
    one video on a pod) is replicated over them instead: every device then computes it whole,
    as XLA would for an unshardable dimension. Training batches always split (the input
    pipeline checks)."""
    rules = nn.get_logical_axis_rules() or DEFAULT_RULES
    heads_name = "attn_heads" if any(name == "attn_heads" for name, _ in rules) else "heads"
    spec = nn.logical_to_mesh_axes(("batch", None, heads_name, None), rules)
    batch_axes = spec[0] if batch % mesh_axes_size(mesh, "batch", rules) == 0 else None
    head_axes = spec[2] if heads % mesh_axes_size(mesh, heads_name, rules) == 0 else None
    return P(batch_axes, None, head_axes, None), P(batch_axes, None)


def attention(q, k, v, mask=None, *, scale: float | None = None,
              options: AttentionOptions | None = None):
    """Splash attention with the entry point's contract (q, k, v: (B, N, H, Dh))."""
    options = options or AttentionOptions()
    b, n, h, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    interpret = options.interpret if options.interpret is not None else target_platform() != "tpu"
    q, k, v, segments, restore = _to_kernel_order(q, k, v, mask)
    splash = kernel_mask(mask, n, options)
    length, n_kernel = splash.shape[0], q.shape[1]
    pad = ((0, 0), (0, length - n_kernel), (0, 0), (0, 0))
    # The kernel does not scale logits: fold the scale into q (in float32, as the reference does).
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    q, k, v = (jnp.pad(a, pad) for a in (q, k, v))
    tail = ((0, 0), (0, length - n_kernel))
    q_segment = jnp.pad(segments.q, tail, constant_values=segments.q_pad)
    kv_segment = jnp.pad(segments.kv, tail, constant_values=segments.kv_pad)

    def local(q, k, v, q_segment, kv_segment):
        """One device's (b, L, h, Dh) shard; the kernel works on (h, L, Dh) per example."""
        kernel = splash_kernel.make_splash_mha(
            splash_mask.MultiHeadMask((splash,) * q.shape[2]), block_sizes=_block_sizes(options),
            head_shards=1, q_seq_shards=1, interpret=interpret,
            # The kernel's output and softmax statistics carry the checkpoint name "attn_out",
            # so a remat policy that saves attn_out (save_qkv_attn) skips re-running the
            # forward kernel in the backward pass.
            residual_checkpoint_name="attn_out")

        def one(q, k, v, q_segment, kv_segment):
            return kernel(q, k, v, segment_ids=splash_kernel.SegmentIds(q_segment, kv_segment))

        heads_first = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
        return jnp.swapaxes(jax.vmap(one)(*heads_first, q_segment, kv_segment), 1, 2)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v, q_segment, kv_segment)
    else:
        spec, segment_spec = _mesh_specs(mesh, b, h)
        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, segment_spec, segment_spec),
                            out_specs=spec, check_vma=False)(q, k, v, q_segment, kv_segment)
    return restore(out[:, :n_kernel]).astype(q.dtype)
