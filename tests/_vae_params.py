"""Random VAE params for the tests that compare two computations (any params must give equal
results): the init's structure and logical-axis boxes, numpy-random float32 values (fan-in scaled
kernels, non-trivial norm scales and biases). Drawing them in numpy skips compiling ~100 threefry
draws (tens of seconds on a loaded 2-core CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from seaweed_jax.models.vae import autoencoder as ae


def random_params(cfg, seed: int = 0):
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        shape, name = leaf.value.shape, jax.tree_util.keystr(path)
        if "kernel" in name:
            v = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif "scale" in name:
            v = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            v = 0.1 * rng.normal(size=shape)
        return leaf.replace_boxed(jnp.asarray(v, jnp.float32))
    return jax.tree_util.tree_map_with_path(fill, ae.abstract_params(cfg),
                                            is_leaf=lambda l: isinstance(l, nn.Partitioned))
