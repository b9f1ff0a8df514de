"""Mesh construction, the rules table and remat policies."""
import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
import pytest
from flax import linen as nn

from seaweed_jax import parallel
from seaweed_jax.parallel import mesh as mesh_lib
from seaweed_jax.parallel import remat, sharding


def test_mesh_fills_one_axis():
    m = parallel.make_mesh(mc.ConfigDict({"shape": {"data": -1, "tensor": 2}}))
    assert dict(m.shape) == {"data": 4, "fsdp": 1, "tensor": 2, "context": 1}


@pytest.mark.parametrize("shape,msg", [
    ({"data": 3}, "uses 3 devices but 8"),
    ({"data": -1, "fsdp": -1}, "only one axis"),
    ({"data": -1, "tensor": 3}, "not divisible"),
    ({"pipeline": 2}, "unknown axes"),
])
def test_mesh_errors_say_what_to_change(shape, msg):
    with pytest.raises(ValueError, match=msg):
        parallel.make_mesh(mc.ConfigDict({"shape": shape}))


def test_rules_validation():
    parallel.validate_rules(parallel.DEFAULT_RULES, parallel.MESH_AXES)
    with pytest.raises(ValueError, match="unknown logical axis"):
        parallel.validate_rules((("nope", "data"),), parallel.MESH_AXES)
    with pytest.raises(ValueError, match="not one of the mesh axes"):
        parallel.validate_rules((("embed", "pipe"),), parallel.MESH_AXES)


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")),
                       (x.shape[-1], 16))
        return x @ w


def test_logical_params_land_on_mesh_axes():
    m = parallel.make_mesh(mc.ConfigDict({"shape": {"data": 2, "fsdp": 2, "tensor": 2}}))
    x = jnp.ones((4, 8))
    abstract = jax.eval_shape(_Dense().init, jax.random.key(0), x)
    shardings = sharding.logical_to_shardings(abstract, m, parallel.DEFAULT_RULES)
    params = jax.jit(_Dense().init, out_shardings=shardings)(jax.random.key(0), x)
    w = nn.meta.unbox(params)["params"]["w"]
    assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert w.addressable_shards[0].data.shape == (4, 8)


def test_host_to_global_shards_batch():
    m = parallel.make_mesh(mc.ConfigDict({"shape": {"data": -1}}))
    batch = {"video": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "caption": np.array(["a"] * 8)}
    out = sharding.host_to_global(batch, m)
    assert out["video"].sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(np.asarray(out["video"]), batch["video"])
    assert out["caption"].dtype.kind == "U"


@pytest.mark.parametrize("name", ["minimal", "save_dots", "save_qkv_attn", "offload_block_in"])
def test_named_remat_policies_give_same_grads(name):
    def f(x):
        h = remat.checkpoint_name(jnp.sin(x) @ x, "block_in")
        return jnp.sum(jnp.tanh(h) ** 2)

    x = jnp.linspace(0, 1, 16).reshape(4, 4)
    ref = jax.grad(f)(x)
    policy = remat.get_policy(name)
    try:
        got = jax.grad(jax.checkpoint(f, policy=policy))(x)
    except Exception as e:  # host offload needs memory kinds; CPU supports pinned_host in jax 0.10
        pytest.fail(f"policy {name} failed on CPU: {e}")
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown remat policy"):
        remat.get_policy("bogus")
