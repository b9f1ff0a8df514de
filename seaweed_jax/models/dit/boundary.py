"""Two backward-pass fences: `grad_boundary` (the residual streams' gradient computed once,
XLA:CPU) and `fenced_call` (a block's weight gradients computed with its input gradient).

## grad_boundary
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

## fenced_call
XLA may compute a block's weight gradients (dW = x^T . dy) long after its input gradient dx:
nothing but the optimizer update reads dW, so the scheduler is free to put those matmuls at
the very end of the backward pass, and their operands (the block's activations and output
gradients) stay live across everything scheduled in between. On the 7B stage-1 step over a
16 x 4 (FSDP x context) v5p-128 mesh with `offload_block_in`, XLA did that for the unrolled
layer 31: 3.26 GiB of its operands lived through both backward layer scans (README, planner
section). `fenced_call` runs the block with a custom VJP whose backward passes (dW, dx)
through one `lax.optimization_barrier`, so dx, and with it the rest of the backward pass,
waits for dW. Same values; only the schedule is constrained.
"""
from __future__ import annotations

import flax.linen as nn
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


def fenced_call(block: nn.Module, diff_args: tuple, other_args: tuple = ()):
    """`block(*diff_args, *other_args)`, with the block's weight gradients and the gradients of
    `diff_args` released together in the backward pass (module docstring, "fenced_call").
    `other_args` (masks, RoPE tables: nothing trained reaches them) are closed over, so no
    gradient of theirs is made only to pass through the barrier."""
    def call(mdl, *xs):
        return mdl(*xs, *other_args)

    def fwd(mdl, *xs):
        return nn.vjp(call, mdl, *xs)

    def bwd(vjp_fn, ct):
        grads = vjp_fn(ct)   # (param cotangents, *cotangents of diff_args)
        # float0 cotangents (of integer / bool inputs) cannot enter the barrier.
        leaves, tree = jax.tree.flatten(grads)
        real = [i for i, g in enumerate(leaves) if g.dtype != jax.dtypes.float0]
        for i, g in zip(real, jax.lax.optimization_barrier([leaves[i] for i in real])):
            leaves[i] = g
        return jax.tree.unflatten(tree, leaves)

    return nn.custom_vjp(call, forward_fn=fwd, backward_fn=bwd)(block, *diff_args)
