"""Per-backend attention settings, carried from the model config to the backend, and the
platform a backend compiles for."""
from __future__ import annotations

import dataclasses

import jax

# Mosaic tiles the sequence in multiples of the TPU lane width.
LANE = 128


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """block_q / block_kv: splash's tile sizes (the sequence is padded to a multiple of both).
    interpret: None = the Mosaic kernel on TPU, interpret mode on any other platform.
    The xla and cudnn backends ignore these."""
    block_q: int = 512
    block_kv: int = 512
    interpret: bool | None = None

    def __post_init__(self):
        for name in ("block_q", "block_kv"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < LANE or value % LANE:
                raise ValueError(f"attention {name}={value!r}: splash blocks must be positive multiples "
                                 f"of {LANE} (the TPU lane width), e.g. 128, 256 or 512; set "
                                 "model.attention_block_sizes=(block_q, block_kv)")


def target_platform() -> str:
    """The platform the program is compiled for: the active mesh's devices (also an ahead-of-time
    TPU topology mesh on a CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()
