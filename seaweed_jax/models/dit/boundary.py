"""A fusion boundary for the backward pass: the residual streams' gradient computed once.

Across unrolled layers the residual stream's gradient is a chain of cheap adds (every layer
above adds its branch's contribution). XLA:CPU fuses that chain into each of its consumers
(each weight gradient's transposed operand, each LayerNorm-backward reduction) instead of
computing it once, so layer i's backward recomputes the layers above it: O(L^2) work. An 8 x 256
DiT step ran ~1.5x slower unrolled than scanned (a scan's carry is materialized anyway), the
4 x 128 demo DiT 1.4x slower than with this boundary (benchmarks/dit_step.py, docs/results.md).
`lax.optimization_barrier` does not stop it (none is left in XLA:CPU's compiled program, and
barriers at the block outputs left the duplicated fusions as they were); a conditional does,
since XLA cannot fuse across one.

Used after every DiT block when `model.layer_grad_boundary` is on AND the backend is CPU:
elsewhere the conditional's predicate costs a device-to-host sync (GPU) or, on a sharded
batch, a broadcast of one scalar per layer and stream, for no known gain.
"""
from __future__ import annotations

import jax


@jax.custom_vjp
def grad_boundary(x):
    """Identity; its backward returns the cotangent through a conditional XLA cannot fuse
    across. The branch taken is the identity unless the cotangent's first element is NaN; then
    the other branch returns all NaN (the gradient is already non-finite, and the trainer's
    isfinite(grad_norm) guard skips the step either way). Under vmap the conditional becomes
    a select (no boundary, same values); as a custom_vjp it has no forward-mode derivative."""
    return x


def _fwd(x):
    return x, None


def _bwd(_, ct):
    if ct.size == 0:
        return (ct,)
    first = ct[(0,) * ct.ndim]   # one element, no reshape: keeps a sharded layout as it is
    return (jax.lax.cond(first == first, lambda c: c, lambda c: c + first, ct),)


grad_boundary.defvjp(_fwd, _bwd)
