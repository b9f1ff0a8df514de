"""Test setup: 8 fake CPU devices for mesh/sharding tests, float32 everywhere."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    """One data dir shared by the tests of a session (datasets built once)."""
    return str(tmp_path_factory.mktemp("seaweed_data"))
