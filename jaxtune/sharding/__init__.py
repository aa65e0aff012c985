"""Sharding: one mesh ("data", "fsdp", "tensor"), logical-axis rules, and the shardings of params,
optimizer states, batches and activations. A single device is a (1, 1, 1) mesh.

The train loop's calls:

    mesh = make_mesh(config.sharding)                  # mesh.py
    rules = rules_from_config(config.sharding)         # or rules_for("fsdp_tp")
    p_sh = param_shardings(params, mesh, rules)        # params.py
    o_sh = opt_state_shardings(jax.eval_shape(tx.init, params), params, p_sh, mesh)
    b_sh = batch_sharding(mesh, rules)
    with use_mesh(mesh, rules):                        # activates shard() in the model
        step = jax.jit(step_fn, in_shardings=..., out_shardings=...)

Multi-host: `distributed.initialize(config)` before anything touches devices.
"""

from jaxtune.sharding.constrain import active, shard, use_mesh
from jaxtune.sharding.mesh import default_config, make_mesh, mesh_shape, rules_from_config
from jaxtune.sharding.params import (
    ShardingFn,
    batch_sharding,
    data_parallel_size,
    logical_axes,
    opt_state_shardings,
    param_shardings,
    replicated,
    sharding_fn,
)
from jaxtune.sharding.rules import (
    BASE_RULES,
    MESH_AXES,
    TOPOLOGIES,
    Rules,
    ShardingConfigError,
    check_rules,
    rules_for,
    spec,
)

__all__ = [
    "BASE_RULES",
    "MESH_AXES",
    "TOPOLOGIES",
    "Rules",
    "ShardingConfigError",
    "ShardingFn",
    "active",
    "batch_sharding",
    "check_rules",
    "data_parallel_size",
    "default_config",
    "logical_axes",
    "make_mesh",
    "mesh_shape",
    "opt_state_shardings",
    "param_shardings",
    "replicated",
    "rules_for",
    "rules_from_config",
    "shard",
    "sharding_fn",
    "spec",
    "use_mesh",
]
