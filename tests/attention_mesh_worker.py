"""The splash kernel (interpret mode) under an 8-device (2, 2, 2) mesh, wrapped per shard by
`jaxtune.sharding.use_mesh`; prints the largest error against the reference (subprocess).

    python -m tests.attention_mesh_worker
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = flags
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import sharding
from jaxtune.models.attention import attention, splash_attention
from tests.test_attention_fused import inputs


def main() -> None:
    q, k, v, parts, valid = inputs(t=128, h=4, n_kv=2, d=64, window=24)
    q, k, v = (jnp.concatenate([x, 0.5 * x]) for x in (q, k, v))  # 4 rows: split over 2 x 2
    parts = jax.tree.map(lambda x: jnp.concatenate([x, x]) if x.ndim == 2 else x, parts)
    valid = np.concatenate([valid, valid])
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.use_mesh(mesh, sharding.rules_for("fsdp_tp")):
        fn = jax.jit(lambda q, k, v, m: splash_attention(q, k, v, m, 0.125, None, interpret=True))
        hlo = fn.lower(q, k, v, parts).as_text()
        got = fn(q, k, v, parts)
    want = attention(q, k, v, parts.dense(), 0.125)
    error = float(np.abs(np.asarray(got) - np.asarray(want))[valid].max())
    print(f"per_shard={'manual_computation' in hlo} error={error}")


if __name__ == "__main__":
    main()
