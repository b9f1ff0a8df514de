"""Build the golden fixture tests/fixtures/lpips_tiny/ with the REAL `lpips` package (0.1.4).

Run it in a reference venv holding torch + torchvision + lpips (never dependencies of seaweed_jax):

    python3.11 -m venv /tmp/ref
    /tmp/ref/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips numpy
    /tmp/ref/bin/python scripts/make_lpips_fixture.py [--out tests/fixtures/lpips_tiny]

The network is the package's own `lpips.LPIPS(pretrained=False, net='vgg', pnet_rand=True)`, so its
ScalingLayer, its `pretrained_networks.vgg16` slicing (relu1_2 .. relu5_3), `normalize_tensor`,
NetLinLayer heads and spatial averaging compute the expected values. Only the widths are narrowed
so the files stay small: torchvision's `vgg16` is swapped, while LPIPS is built, for a module whose
`features` is torchvision's own `make_layers` on VGG16's layout with widths WIDTHS (same
`features.N` indices), and the five heads are replaced by NetLinLayers of those widths. Every
stage has a different width, so a stage or head mapped to the wrong place fails on shape.
Weights are random with fixed seeds: He-normal convs with non-zero biases (the default init would
shrink the deep features to nearly input-independent values, and every layer should weigh in)
and non-negative heads like the shipped ones.

Writes:
  vgg_tiny.pth   torchvision-style VGG16 state dict (features.N.weight / .bias + a classifier.*
                 entry that the converter must ignore)
  lin_tiny.pth   the heads, keyed like the package's weights/v0.1/vgg.pth (lin{l}.model.1.weight)
  expected.npz   x, y (4, 3, 38, 54) inputs in [-1, 1] (NCHW, as torch saw them), d (4,) LPIPS per
                 pair, per_layer (4, 5) each layer's term. Pairs: independent noise images; a
                 smooth image vs a slightly noisy copy; identical images (d = 0); a smooth image vs
                 a copy shifted by one pixel. 38x54 is not square and halves to odd sizes (19x27,
                 9x13), so an H/W transpose or ceil-mode pooling fails parity.
Then convert the two .pth files into our format (committed too: the test env has no torch):
  /tmp/ref/bin/python scripts/convert_lpips.py --vgg OUT/vgg_tiny.pth --lin OUT/lin_tiny.pth \\
      --out OUT/lpips_tiny.npz
"""
from __future__ import annotations

import argparse
import os
import re
from unittest import mock

import lpips
import numpy as np
import torch
import torch.nn.functional as F
from lpips import pretrained_networks
from torchvision.models import vgg as tv_vgg

WIDTHS = (4, 6, 8, 12, 16)
SHAPE = (4, 3, 38, 54)


class NarrowVGG16(torch.nn.Module):
    """Stands in for torchvision.models.vgg16(): VGG16's `features` layout at WIDTHS."""

    def __init__(self):
        super().__init__()
        w = WIDTHS
        cfg = [w[0], w[0], "M", w[1], w[1], "M", w[2], w[2], w[2], "M", w[3], w[3], w[3], "M",
               w[4], w[4], w[4], "M"]
        self.features = tv_vgg.make_layers(cfg)
        self.classifier = torch.nn.Sequential(torch.nn.Linear(w[4], 2))


def build() -> tuple[lpips.LPIPS, NarrowVGG16]:
    torch.manual_seed(0)
    made = []   # the VGG whose `features` modules the package slices (shared, not copied)

    def narrow_vgg16(*args, **kwargs):
        made.append(NarrowVGG16())
        return made[-1]

    with mock.patch.object(pretrained_networks.tv, "vgg16", narrow_vgg16):
        model = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    (vgg,) = made
    heads = [lpips.NetLinLayer(c, use_dropout=True) for c in WIDTHS]
    model.lins = torch.nn.ModuleList(heads)
    for l, head in enumerate(heads):
        setattr(model, f"lin{l}", head)
    with torch.no_grad():
        convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 13, len(convs)
        for conv in convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.copy_(0.1 * torch.randn_like(conv.bias))
        for head in heads:
            w = head.model[1].weight
            w.copy_(torch.rand_like(w) * (2.0 / w.shape[1]))
    assert all(a is b for a, b in zip(convs, (m for m in vgg.features if isinstance(m, torch.nn.Conv2d))))
    return model.eval(), vgg


def inputs():
    g = torch.Generator().manual_seed(1)
    n, c, h, w = SHAPE

    def smooth():
        low = torch.rand(1, c, h // 6, w // 6, generator=g) * 2 - 1
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]

    noise = lambda: torch.rand(c, h, w, generator=g) * 2 - 1  # noqa: E731
    a, b = smooth(), smooth()
    same = noise()
    x = torch.stack([noise(), a, same, b])
    y = torch.stack([noise(), (a + 0.05 * torch.randn(c, h, w, generator=g)).clamp(-1, 1), same,
                     torch.roll(b, shifts=1, dims=2)])
    return x, y


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(here, "tests", "fixtures", "lpips_tiny"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    model, vgg = build()
    x, y = inputs()
    with torch.no_grad():
        d, per_layer = model(x, y, retPerLayer=True)
    d = d.reshape(-1).numpy()
    per_layer = torch.cat([r.reshape(-1, 1) for r in per_layer], dim=1).numpy()
    torch.save({k: v.clone() for k, v in vgg.state_dict().items()}, os.path.join(out, "vgg_tiny.pth"))
    heads = {k: v.clone() for k, v in model.state_dict().items() if re.match(r"^lin\d\.", k)}
    torch.save(heads, os.path.join(out, "lin_tiny.pth"))
    np.savez_compressed(os.path.join(out, "expected.npz"), x=x.numpy(), y=y.numpy(),
                        d=d.astype(np.float32), per_layer=per_layer.astype(np.float32))
    print(f"wrote {out}: widths {WIDTHS}, heads {sorted(heads)}")
    print("d", np.array2string(d, precision=5))
    print("per layer\n", np.array2string(per_layer, precision=5))


if __name__ == "__main__":
    main()
