from seaweed_jax.parallel.mesh import MESH_AXES, batch_sharding, data_parallel_size, make_mesh, replicated
from seaweed_jax.parallel.rules import DEFAULT_RULES, LOGICAL_AXES, rules_from_config, validate_rules
