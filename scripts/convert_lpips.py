"""Convert the public LPIPS ('vgg', v0.1) torch weights into seaweed_jax's single .npz.

    python scripts/convert_lpips.py --lin LIN.pth --vgg VGG.pth --out lpips_vgg.npz

--lin  the lpips package's linear heads, shipped inside `pip install lpips` as
       <site-packages>/lpips/weights/v0.1/vgg.pth (keys lin{l}.model.1.weight, (1, C, 1, 1)).
--vgg  a torchvision VGG16 state dict (keys features.N.weight / .bias; classifier.* is ignored),
       e.g. torchvision's IMAGENET1K_V1 file vgg16-397923af.pth, which the package uses.
       A whole `lpips.LPIPS().state_dict()` also works for either flag (net.sliceK.N.* keeps
       torchvision's index N; lins.{l}.* is the same head as lin{l}.*).

Reading .pth files needs torch (imported in `read_pth` only; never a seaweed_jax dependency);
the conversion itself is numpy. The output's names and layouts are documented in
seaweed_jax/eval/lpips.py (`lpips.load` reads it; this script does not import seaweed_jax, so it
runs in any venv with torch + numpy). Run it once, anywhere; copy the .npz to the training
machines and set config.loss.lpips_weights_path to it.
"""
from __future__ import annotations

import argparse
import os
import re

import numpy as np

CONVS_PER_STAGE = (2, 2, 3, 3, 3)
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES = [f"conv{s}_{i}" for s, n in enumerate(CONVS_PER_STAGE, 1) for i in range(1, n + 1)]
NUM_LAYERS = 5
_SLICE = re.compile(r"^net\.slice\d\.(\d+)\.(weight|bias)$")   # lpips.LPIPS's own VGG naming
_LINS = re.compile(r"^lins\.(\d)\.model\.1\.weight$")


def _strip(state: dict) -> dict:
    """Drops a DataParallel 'module.' prefix."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def vgg_arrays(state: dict, where: str = "--vgg") -> dict[str, np.ndarray]:
    """torchvision features.N.{weight,bias} (or lpips net.sliceK.N.*) -> our vgg/conv*/* arrays."""
    state = _strip(state)
    by_index = {}
    for k, v in state.items():
        m = re.match(r"^features\.(\d+)\.(weight|bias)$", k) or _SLICE.match(k)
        if m:
            by_index[(int(m.group(1)), m.group(2))] = np.asarray(v, np.float32)
    want = [(i, p) for i in TORCHVISION_INDICES for p in ("weight", "bias")]
    missing = [f"features.{i}.{p}" for i, p in want if (i, p) not in by_index]
    if missing:
        raise ValueError(f"{where}: not a VGG16 state dict: missing {len(missing)} of {len(want)} "
                         f"conv keys, e.g. {missing[:4]} (found "
                         f"{len(state)} keys, e.g. {sorted(state)[:4]}); expected torchvision "
                         f"vgg16().state_dict() keys features.N.weight / features.N.bias")
    extra = sorted(f"features.{i}.{p}" for i, p in set(by_index) - set(want))
    if extra:
        raise ValueError(f"{where}: unexpected conv keys {extra}: not a plain VGG16 (batch-norm "
                         f"variants such as vgg16_bn are not what LPIPS uses)")
    out, c_in = {}, 3
    for name, i in zip(CONV_NAMES, TORCHVISION_INDICES):
        w, b = by_index[(i, "weight")], by_index[(i, "bias")]
        if w.ndim != 4 or w.shape[1] != c_in or w.shape[2:] != (3, 3) or b.shape != (w.shape[0],):
            raise ValueError(f"{where}: features.{i}.weight {w.shape} / features.{i}.bias {b.shape}: "
                             f"expected (C, {c_in}, 3, 3) and (C,) (the previous conv has "
                             f"{c_in} output channels)")
        out[f"vgg/{name}/kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        out[f"vgg/{name}/bias"] = b
        c_in = w.shape[0]
    return out


def lin_arrays(state: dict, where: str = "--lin") -> dict[str, np.ndarray]:
    """lpips lin{l}.model.1.weight (1, C, 1, 1) (or lins.{l}.*) -> our lin{l}/kernel (C, 1)."""
    state = _strip(state)
    heads = {}
    for k, v in state.items():
        m = re.match(r"^lin(\d)\.model\.1\.weight$", k) or _LINS.match(k)
        if m:
            heads[int(m.group(1))] = np.asarray(v, np.float32)
    missing = [f"lin{l}.model.1.weight" for l in range(NUM_LAYERS) if l not in heads]
    if missing:
        raise ValueError(f"{where}: not an LPIPS linear-head file: missing {missing} (found keys "
                         f"{sorted(state)[:6]}); use the lpips package's weights/v0.1/vgg.pth")
    out = {}
    for l in range(NUM_LAYERS):
        w = heads[l]
        if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            raise ValueError(f"{where}: lin{l}.model.1.weight has shape {w.shape}; expected "
                             f"(1, C, 1, 1) (a 1x1 conv to one channel)")
        if np.any(w < 0):
            raise ValueError(f"{where}: lin{l}.model.1.weight has negative entries; the shipped "
                             f"LPIPS heads are >= 0")
        out[f"lin{l}/kernel"] = np.ascontiguousarray(w.reshape(w.shape[1], 1))
    return out


def convert(vgg_state: dict, lin_state: dict, vgg_where: str = "--vgg",
            lin_where: str = "--lin") -> dict[str, np.ndarray]:
    """{our array name: float32 array} from the two torch state dicts (values as numpy)."""
    arrays = {**vgg_arrays(vgg_state, vgg_where), **lin_arrays(lin_state, lin_where)}
    stage_last = [f"conv{s}_{n}" for s, n in enumerate(CONVS_PER_STAGE, 1)]
    widths = [arrays[f"vgg/{c}/kernel"].shape[-1] for c in stage_last]
    heads = [arrays[f"lin{l}/kernel"].shape[0] for l in range(NUM_LAYERS)]
    if widths != heads:
        raise ValueError(f"the heads' widths {heads} ({lin_where}) differ from the VGG's stage "
                         f"widths {widths} ({vgg_where}): the two files are from different networks")
    return arrays


def read_pth(path: str) -> dict[str, np.ndarray]:
    """A torch state dict file as {key: float32 numpy array}."""
    import torch  # lazy: only this script needs torch, and only to read .pth files

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
    return {k: v.detach().float().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:   # a file object: np.savez would append '.npz' to a bare name
        np.savez(f, **{k: np.asarray(v, np.float32) for k, v in sorted(arrays.items())})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lin", required=True, help="lpips heads .pth (lpips/weights/v0.1/vgg.pth)")
    ap.add_argument("--vgg", required=True, help="torchvision VGG16 state dict .pth")
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args(argv)
    for flag, path in (("--vgg", args.vgg), ("--lin", args.lin)):
        if not os.path.isfile(path):
            raise SystemExit(f"convert_lpips: {flag} {path}: no such file")
    try:
        arrays = convert(read_pth(args.vgg), read_pth(args.lin), args.vgg, args.lin)
    except ImportError as e:
        raise SystemExit(f"convert_lpips: reading .pth files needs torch ({e}); run this script in "
                         f"a venv with `pip install torch numpy` (CPU wheels are enough)") from None
    except ValueError as e:
        raise SystemExit(f"convert_lpips: {e}") from None
    write_npz(args.out, arrays)
    widths = [arrays[f"lin{l}/kernel"].shape[0] for l in range(NUM_LAYERS)]
    n = sum(a.size for a in arrays.values())
    print(f"wrote {args.out}: {len(arrays)} arrays, {n} values, stage widths {widths}")


if __name__ == "__main__":
    main()
