"""Gradients of the tiny model under hand-written layouts on a (2, 2, 2) CPU mesh (subprocess).

    python -m tests.xla_bug_worker OUT.json

For each layout in LAYOUTS, every weight matrix (embedding, lm_head, all kernels) is split
P(..., *WEIGHTS) and the batch P(BATCH); the JSON holds the largest loss and gradient error
against one device.
"""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = flags
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtune import sharding
from tests.sharding_worker import dense_params, loss_fn, make_batch

LAYOUTS = {  # name: (weight matrix split of [in, out], batch split)
    "bug": (("fsdp", "tensor"), ("data", "fsdp")),
    "fsdp_major_batch": (("fsdp", "tensor"), ("fsdp", "data")),
}


def main(out: str) -> None:
    params = dense_params()
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    grad_fn = jax.value_and_grad(loss_fn)
    ref_loss, ref_grads = jax.jit(grad_fn)(params, batch)
    mesh = sharding.make_mesh((2, 2, 2))
    results = {}
    for name, (weights, rows) in LAYOUTS.items():

        def layout(x, weights=weights):
            lead = (None,) * (x.ndim - 2)
            return NamedSharding(mesh, P(*lead, *weights) if x.ndim >= 2 else P())

        p_sh = jax.tree.map(layout, params)
        b_sh = NamedSharding(mesh, P(rows))
        loss, grads = jax.jit(
            grad_fn, in_shardings=(p_sh, b_sh), out_shardings=(sharding.replicated(mesh), p_sh)
        )(jax.device_put(params, p_sh), jax.device_put(batch, b_sh))
        errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, ref_grads)
        results[name] = {
            "loss_error": float(abs(loss - ref_loss)),
            "grad_error": max(jax.tree.leaves(errors)),
            "grad_scale": max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads)),
        }
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
