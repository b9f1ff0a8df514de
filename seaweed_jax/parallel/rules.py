"""The one logical-axis rules table: logical names -> mesh axes.

Every param is created with `nn.with_logical_partitioning(init, names)` using names from
`LOGICAL_AXES`; activations use `nn.with_logical_constraint`. The mapping to mesh axes is
config (`config.mesh.rules`), with `DEFAULT_RULES` as the default.

Ulysses context parallelism is two rules: tokens (`length`) are sharded over `context`
between attention layers, and inside attention the heads (`attn_heads`) are sharded over
`tensor` x `context` with the whole sequence on each device. The change of sharding around
attention is an all-to-all (models/dit/attention.py places the two constraints).
"""
from __future__ import annotations

import math
from typing import Sequence

# Every logical axis name a module may use. Adding a name here is the only way to add one.
LOGICAL_AXES = (
    "batch",      # examples
    "length",     # token sequence
    "frames",     # video time (T)
    "height",
    "width",
    "embed",      # model width D
    "heads",
    "attn_heads",  # heads inside attention: Ulysses also shards them over `context`
    "head_dim",
    "kv",
    "mlp",        # FFN hidden
    "vocab",
    "conv_in",    # conv input channels
    "conv_out",   # conv output channels
    "conv_k",     # conv kernel taps (never sharded)
    "norm",       # norm scale/bias
    "layers",     # scanned layer stack
    "modulation",  # AdaSingle / adaLN modulation vectors
)

# logical -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("frames", None),
    ("height", None),
    ("width", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("attn_heads", ("tensor", "context")),
    ("head_dim", None),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("conv_k", None),
    ("norm", None),
    ("layers", None),
    ("modulation", None),
)


def validate_rules(rules: Sequence[tuple[str, object]], mesh_axes: Sequence[str]) -> None:
    """Reject rules naming unknown logical or mesh axes, with a message saying what to fix."""
    for logical, mesh_axis in rules:
        if logical not in LOGICAL_AXES:
            raise ValueError(
                f"mesh.rules names unknown logical axis {logical!r}; known: {', '.join(LOGICAL_AXES)}")
        targets = mesh_axis if isinstance(mesh_axis, (tuple, list)) else (mesh_axis,)
        for t in targets:
            if t is not None and t not in mesh_axes:
                raise ValueError(
                    f"mesh.rules maps {logical!r} to mesh axis {t!r}, which is not one of the mesh axes "
                    f"{tuple(mesh_axes)}")


def rules_from_config(mesh_config) -> tuple[tuple[str, object], ...]:
    rules = mesh_config.get("rules", None) if mesh_config is not None else None
    if not rules:
        return DEFAULT_RULES
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def mesh_axes_size(mesh, logical: str, rules) -> int:
    """How many devices the logical axis `logical` is split over under `rules` on `mesh`."""
    for name, target in rules:
        if name == logical:
            axes = target if isinstance(target, (tuple, list)) else (target,)
            sizes = dict(mesh.shape)
            return math.prod(sizes.get(a, 1) for a in axes if a is not None)
    return 1
