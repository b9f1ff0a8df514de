"""Tiled VAE inference around any encode / decode callable: OD-VAE temporal groups and
blended spatial tiles. Lossy (unlike the exact Causal Cache chunks of `autoencoder.encode`),
but every group / tile is independent: memory is bounded by ONE tile, and tiles could run
in parallel. The functions only slice, call and reassemble, so they compose with the Causal
Cache (the callable may chunk) and with any model.

    mean = tiling.encode(enc, video, Tiling(temporal_tile_frames=33, spatial_tile=256), (4, 8, 8))
    video = tiling.decode(dec, latents, same_tiling, (4, 8, 8))

Temporal groups first, spatial tiles inside each group. All knobs are in pixel / frame units.

Temporal (OD-VAE, as in Open-Sora-Plan's CausalVAE tiled_encode / tiled_decode). A clip of
T = 1 + dt*k frames is cut into groups of F = 1 + dt*m frames (`temporal_tile_frames`) starting
every F - 1 = dt*m frames, so neighbours share one frame:

    frames [0, F), [F-1, 2F-1), [2(F-1), 3F-2), ...   the last clipped to [s, T) (1 + dt*r, r <= m)

A group starting at frame s is encoded on its own: its latent 0 is frame s coded like an
image, its latent j >= 1 covers frames s+1+dt(j-1) .. s+dt*j, i.e. the frames of global latent
s/dt + j. Frame s is already inside the previous group's last latent, so every later group
drops its latent 0; the total is 1 + (T-1)/dt latents, as untiled. Decode mirrors it: latent
groups of L = 1 + m latents starting every m latents ([0, L), [m, m+L), ...); group g decodes
to 1 + dt*(its latents - 1) frames whose frame 0 (from its first latent alone, read as an
image latent) is global frame g*dt*m, the previous group's last frame: dropped. The total is
1 + dt*(t-1) frames. Lossy twice: an encoded group sees none of the frames before it, and
the shared latent (a summary of dt frames) is decoded as an image latent of one frame.

Spatial. Along an axis of N (input units) with tile S and overlap O (0 <= O < S), tiles start
at 0, S-O, 2(S-O), ... while start + S < N, then at N - S: the last tile is shifted back to
end at the border and keeps the full size (one compiled tile shape; it may overlap its
neighbour by more than O). N <= S: one tile, clipped to [0, N). Encode tiles pixels (starts
are multiples of the spatial factor, so latent tiles land on the latent grid) and blends
latent tiles; decode tiles latents and blends pixel tiles. Blending: each tile output is
weighted by a separable linear ramp over its ACTUAL overlap L with the neighbour on each
side, (1, 2, ..., L) / (L + 1) rising into the tile and mirrored falling out of it (1 at the
image border and in the interior), and output = sum_i w_i tile_i / sum_i w_i. Two tiles
overlapping by L have weights summing to 1 there; the normalization covers deeper overlaps,
so a function that ignores tile boundaries (a per-pixel map) is reproduced exactly.
"""
from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Fn = Callable[[Any], Any]   # (B, T, H, W, C) -> (B, T', H', W', C')


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tiled-inference settings; None = that kind of tiling off (the default: exact inference).

    temporal_tile_frames  frames per OD-VAE group, 1 + dt*m (m >= 1); latent groups have 1 + m
    spatial_tile     tile height = width in pixels, a multiple of the spatial factor
    spatial_overlap  pixels shared by neighbouring tiles, a multiple of the spatial factor,
                     < spatial_tile; None = a quarter of the tile (rounded down to the factor)
    """
    temporal_tile_frames: int | None = None
    spatial_tile: int | None = None
    spatial_overlap: int | None = None

    @property
    def active(self) -> bool:
        return self.temporal_tile_frames is not None or self.spatial_tile is not None

    def resolve(self, compression: Sequence[int], prefix: str = "tiling.") -> "Tiling":
        """Validated copy with the default overlap filled in. Errors name `prefix` + field
        (e.g. prefix '--' for CLI flags) and say what to pass instead."""
        dt, dh, dw = (int(c) for c in compression)
        f = int(np.lcm(dh, dw))
        t, s, o = self.temporal_tile_frames, self.spatial_tile, self.spatial_overlap
        if t is not None and (t < 1 + dt or (t - 1) % dt):
            m = max(1, (t - 1) // dt)
            raise ValueError(f"{prefix}temporal_tile_frames={t} must be 1+{dt}m frames with m >= 1 "
                             f"(groups share one frame), e.g. {1 + dt * m} or {1 + dt * (m + 1)}; "
                             f"omit it to code the clip in one group")
        if s is not None and (s < f or s % f):
            lo = max(f, s // f * f)
            raise ValueError(f"{prefix}spatial_tile={s} must be a positive multiple of the VAE's "
                             f"spatial factor {f}, e.g. {lo} or {lo + f}")
        if o is not None:
            if s is None:
                raise ValueError(f"{prefix}spatial_overlap={o} needs {prefix}spatial_tile; pass "
                                 f"both, or neither for untiled frames")
            if o < 0 or o % f or o >= s:
                lo = min(max(0, o // f * f), s - f)
                raise ValueError(f"{prefix}spatial_overlap={o} must be a multiple of the VAE's "
                                 f"spatial factor {f} in [0, {prefix}spatial_tile={s}), e.g. {lo}")
        elif s is not None:
            o = s // 4 // f * f
        return Tiling(t, s, o)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def from_config(cfg) -> Tiling | None:
    """A `Tiling` from a config section / dict with the field names (None or empty: None)."""
    if not cfg:
        return None
    known = {f.name for f in dataclasses.fields(Tiling)}
    extra = sorted(set(dict(cfg)) - known)
    if extra:
        raise ValueError(f"unknown tiling fields {extra}; known: {sorted(known)}")
    tiling = Tiling(**{k: (None if v is None else int(v)) for k, v in dict(cfg).items()})
    return tiling if tiling.active else None


# ----------------------------------------------------------------------------- layouts

def temporal_groups(length: int, group: int) -> list[tuple[int, int]]:
    """[start, stop) groups of `group` items, neighbours sharing one item, covering [0, length)."""
    if group < 2:
        raise ValueError(f"temporal groups need >= 2 items each (one is shared), got {group}")
    if length <= group:
        return [(0, length)]
    return [(s, min(s + group, length)) for s in range(0, length - 1, group - 1)]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along an axis (see the module doc): stride tile - overlap, last tile shifted."""
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap ({overlap}) < tile ({tile})")
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def ramp_weights(starts: Sequence[int], tile: int, size: int) -> list[np.ndarray]:
    """Per tile, its 1-D blend weights (module doc): linear ramps over the actual overlaps."""
    spans = [(s, min(s + tile, size)) for s in starts]
    out = []
    for i, (a, b) in enumerate(spans):
        w = np.ones(b - a, np.float64)
        if i > 0:
            left = max(0, spans[i - 1][1] - a)
            w[:left] *= np.arange(1, left + 1) / (left + 1)
        if i + 1 < len(spans):
            right = max(0, b - spans[i + 1][0])
            w[b - a - right:] *= np.arange(right, 0, -1) / (right + 1)
        out.append(w)
    return out


# ----------------------------------------------------------------------------- temporal

def encode_temporal(encode: Fn, video, tile_frames: int, dt: int):
    """OD-VAE temporal tiling of `encode` over a (B, 1+dt*k, H, W, C) clip (module doc)."""
    t = video.shape[1]
    if (t - 1) % dt or (tile_frames - 1) % dt or tile_frames < 1 + dt:
        raise ValueError(f"need T=1+{dt}k frames (got {t}) and tile_frames=1+{dt}m, m >= 1 "
                         f"(got {tile_frames})")
    outs = []
    for g, (a, b) in enumerate(temporal_groups(t, tile_frames)):
        z = encode(window(video, 1, a, b - a))
        if z.shape[1] != 1 + (b - a - 1) // dt:
            raise ValueError(f"encode gave {z.shape[1]} latents for {b - a} frames; expected "
                             f"1 + {b - a - 1}/{dt} (a causal VAE with temporal factor {dt})")
        outs.append(z if g == 0 else z[:, 1:])   # latent 0 re-codes the shared frame
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def decode_temporal(decode: Fn, latents, tile_frames: int, dt: int):
    """Mirror of `encode_temporal`: latent groups of 1 + (tile_frames-1)/dt latents sharing
    one, each decoded alone, the first frame of every later group dropped."""
    if (tile_frames - 1) % dt or tile_frames < 1 + dt:
        raise ValueError(f"tile_frames={tile_frames} must be 1+{dt}m with m >= 1")
    t = latents.shape[1]
    outs = []
    for g, (a, b) in enumerate(temporal_groups(t, 1 + (tile_frames - 1) // dt)):
        x = decode(window(latents, 1, a, b - a))
        if x.shape[1] != 1 + dt * (b - a - 1):
            raise ValueError(f"decode gave {x.shape[1]} frames for {b - a} latents; expected "
                             f"1 + {dt}*{b - a - 1}")
        outs.append(x if g == 0 else x[:, 1:])   # frame 0 = the previous group's last frame
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


# ----------------------------------------------------------------------------- spatial

def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def tiled_2d(fn: Fn, x, tile, overlap, scale) -> Any:
    """Apply `fn` to overlapping (tile_h, tile_w) windows of x's (H, W) axes (input units) and
    blend the outputs, placed at start * scale (a Fraction per axis: 1/f encode, f decode)."""
    (th, tw), (oh, ow) = _pair(tile), _pair(overlap)
    sh, sw = (Fraction(s) for s in (scale if isinstance(scale, tuple) else (scale, scale)))
    _, _, h, w, _ = x.shape
    ys, xs = tile_starts(h, th, oh), tile_starts(w, tw, ow)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)

    def out_units(v, s):
        if (v * s).denominator != 1:
            raise ValueError(f"tile position {v} is not on the output grid (scale {s}); use tiles "
                             f"and overlaps that are multiples of the spatial factor")
        return int(v * s)

    oh_, ow_ = out_units(h, sh), out_units(w, sw)
    oth, otw = out_units(min(th, h), sh), out_units(min(tw, w), sw)
    wy = ramp_weights([out_units(y, sh) for y in ys], oth, oh_)
    wx = ramp_weights([out_units(v, sw) for v in xs], otw, ow_)
    # Normalize per axis: the 2-D weights wy_i * wx_j then sum to 1 at every output pixel.
    wy = _normalized(wy, [out_units(y, sh) for y in ys], oh_)
    wx = _normalized(wx, [out_units(v, sw) for v in xs], ow_)
    acc = None
    for i, y in enumerate(ys):
        for j, v in enumerate(xs):
            out = jnp.asarray(fn(window(x, 2, y, min(th, h), 3, v, min(tw, w))))
            if out.shape[2:4] != (len(wy[i]), len(wx[j])):
                raise ValueError(f"a ({min(th, h)}, {min(tw, w)}) tile gave output {out.shape[2:4]}; "
                                 f"expected {(len(wy[i]), len(wx[j]))} (scale {sh}, {sw})")
            if acc is None:   # float32 or wider: blending sums fractions
                acc = jnp.zeros(out.shape[:2] + (oh_, ow_) + out.shape[4:],
                                jnp.result_type(out.dtype, jnp.float32), device=out.sharding)
            weight = (wy[i][:, None] * wx[j][None, :]).astype(np.float32)[None, None, :, :, None]
            acc = _accumulate(acc, out, weight, np.int32(out_units(y, sh)), np.int32(out_units(v, sw)))
    return acc


@jax.jit
def _accumulate(acc, out, weight, y0, x0):
    """acc[:, :, y0:, x0:] += out * weight (offsets traced: one compile per tile shape, not
    one per tile position as eager slicing would)."""
    zero = jnp.zeros((), jnp.int32)
    start = (zero, zero, y0, x0) + (zero,) * (acc.ndim - 4)
    region = lax.dynamic_slice(acc, start, out.shape)
    return lax.dynamic_update_slice(acc, region + (out * weight).astype(acc.dtype), start)


def window(x, *axis_start_size):
    """x[..., start:start+size, ...] on the given (axis, start, size) triples: numpy slicing
    for host arrays, a jitted dynamic slice (traced starts) for jax arrays."""
    if isinstance(x, np.ndarray):
        index = [slice(None)] * x.ndim
        for axis, start, size in zip(*[iter(axis_start_size)] * 3):
            index[axis] = slice(start, start + size)
        return x[tuple(index)]
    starts, sizes = [0] * x.ndim, list(x.shape)
    for axis, start, size in zip(*[iter(axis_start_size)] * 3):
        starts[axis], sizes[axis] = start, size
    return _dynamic_slice(x, tuple(np.int32(s) for s in starts), tuple(sizes))


@functools.partial(jax.jit, static_argnums=2)
def _dynamic_slice(x, starts, sizes):
    return lax.dynamic_slice(x, starts, sizes)


def _normalized(weights: list[np.ndarray], starts: Sequence[int], size: int) -> list[np.ndarray]:
    total = np.zeros(size, np.float64)
    for w, s in zip(weights, starts):
        total[s:s + len(w)] += w
    return [w / total[s:s + len(w)] for w, s in zip(weights, starts)]


def encode_spatial(encode: Fn, video, tile, overlap, factor) -> Any:
    """Spatially tiled `encode`: pixel tiles of `tile` with `overlap` pixels (multiples of the
    spatial `factor` (f_h, f_w)), latent tiles blended on the latent grid."""
    fh, fw = _pair(factor)
    return tiled_2d(encode, video, tile, overlap, (Fraction(1, fh), Fraction(1, fw)))


def decode_spatial(decode: Fn, latents, tile, overlap, factor) -> Any:
    """Spatially tiled `decode`: `tile` / `overlap` in PIXELS (multiples of `factor`), i.e.
    latent tiles of tile / f, decoded pixel tiles blended."""
    (fh, fw), (th, tw), (oh, ow) = _pair(factor), _pair(tile), _pair(overlap)
    if th % fh or tw % fw or oh % fh or ow % fw:
        raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of the spatial "
                         f"factor {(fh, fw)}")
    return tiled_2d(decode, latents, (th // fh, tw // fw), (oh // fh, ow // fw),
                    (Fraction(fh), Fraction(fw)))


# ----------------------------------------------------------------------------- both

def encode(encode_fn: Fn, video, tiling: Tiling | None, compression: Sequence[int]) -> Any:
    """`encode_fn(video)` with `tiling` (None / inactive: one call): temporal groups outside,
    spatial tiles inside."""
    dt, dh, dw = compression
    tiling = None if tiling is None else tiling.resolve(compression)
    fn = encode_fn
    if tiling is not None and tiling.spatial_tile is not None:
        fn = lambda v: encode_spatial(encode_fn, v, tiling.spatial_tile,   # noqa: E731
                                      tiling.spatial_overlap, (dh, dw))
    if tiling is not None and tiling.temporal_tile_frames is not None:
        return encode_temporal(fn, video, tiling.temporal_tile_frames, dt)
    return fn(video)


def decode(decode_fn: Fn, latents, tiling: Tiling | None, compression: Sequence[int]) -> Any:
    """`decode_fn(latents)` with `tiling`; the mirror of `encode`."""
    dt, dh, dw = compression
    tiling = None if tiling is None else tiling.resolve(compression)
    fn = decode_fn
    if tiling is not None and tiling.spatial_tile is not None:
        fn = lambda z: decode_spatial(decode_fn, z, tiling.spatial_tile,   # noqa: E731
                                      tiling.spatial_overlap, (dh, dw))
    if tiling is not None and tiling.temporal_tile_frames is not None:
        return decode_temporal(fn, latents, tiling.temporal_tile_frames, dt)
    return fn(latents)
