"""A tiny SFT-LoRA run under a given mesh, for the sharding tests (run as a subprocess).

    python -m tests.sharding_worker --devices 8 --out r.npz --mesh ref=1,1,1 --mesh tp=2,2,2:fsdp_tp
    python -m tests.sharding_worker --devices 4 --procs 2 --pid 0 --port 12345 --mesh mh=2,2,2 ...

Each `--mesh NAME=D,F,T[:TOPOLOGY]` trains the same model (a 2-layer Llama, v_proj NF4-quantized,
LoRA rank 4 on q/v/down_proj, everything else frozen) for STEPS Adam steps of a masked LM loss
over packed rows, with params, adapter and quantized leaves, optimizer state and batch placed by
jaxtune.sharding, and stores its final params, first-step gradients and losses under NAME. A mesh
of (1, 1, 1) uses one device. The XLA device count must be set before jax is imported, hence a
subprocess.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mesh", action="append", default=[])
    ap.add_argument("--out", required=True)
    return ap.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={ARGS.devices} --xla_backend_optimization_level=0"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxtune import peft, quant, sharding  # noqa: E402
from jaxtune.models import CausalLM, ModelConfig  # noqa: E402
from jaxtune.sharding import distributed  # noqa: E402

STEPS = 3
BATCH, SEQ, RANK = 8, 16, 4
PRNG = jax.random.PRNGKey
CONFIG = ModelConfig(
    family="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
)


def dense_params() -> dict:
    """Deterministic host (numpy) params of CONFIG: normal(0, 0.02) matrices, unit norms."""
    rng = np.random.default_rng(0)

    def one(path, shape):
        if sharding.params.path_name(path).endswith("scale"):
            return np.ones(shape, np.float32)
        return rng.normal(0, 0.02, shape).astype(np.float32)

    shapes = CausalLM(CONFIG).param_shapes()
    return jax.tree_util.tree_map_with_path(one, shapes, is_leaf=lambda x: isinstance(x, tuple))


def init_params() -> dict:
    """QLoRA-style params, identical in every process: v_proj NF4-quantized, LoRA (rank 4) on
    q/v/down_proj with B random too (so that A learns from the first step)."""
    params = quant.quantize(dense_params(), targets=["v_proj"], method="nf4", block_size=32)
    params = peft.lora(params, ["q_proj", "v_proj", "down_proj"], rank=RANK, rng=PRNG(1))
    rng = np.random.default_rng(1)

    def random_b(leaf):
        if isinstance(leaf, peft.LoraWeight):
            return leaf.replace(lora_b=rng.normal(0, 0.1, leaf.lora_b.shape).astype(np.float32))
        return leaf

    params = jax.tree.map(random_b, params, is_leaf=lambda x: isinstance(x, peft.LoraWeight))
    return jax.tree.map(np.asarray, params)


def make_batch() -> dict[str, np.ndarray]:
    """A packed LM batch per the batch contract (two documents per row, some padding)."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, CONFIG.vocab_size, (BATCH, SEQ)).astype(np.int32)
    seg = np.zeros((BATCH, SEQ), np.int32)
    pos = np.zeros((BATCH, SEQ), np.int32)
    for r in range(BATCH):
        cut, end = 5 + r % 4, SEQ - r % 3
        seg[r, :cut], seg[r, cut:end] = 1, 2
        pos[r, :cut], pos[r, cut:end] = np.arange(cut), np.arange(end - cut)
    targets = np.roll(ids, -1, axis=1)
    same_doc = (seg == np.roll(seg, -1, axis=1)) & (seg > 0)
    same_doc[:, -1] = False
    mask = same_doc.astype(np.float32)
    return dict(input_ids=ids, targets=targets, loss_mask=mask, segment_ids=seg, positions=pos)


def loss_fn(params: dict, batch: dict) -> jax.Array:
    model = CausalLM(CONFIG)
    logits = model.apply(
        params,
        batch["input_ids"],
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        attention_mask=batch["segment_ids"] > 0,
    )
    logits = sharding.shard(logits, ("batch", "sequence", "vocab"))  # no-op without a mesh
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train(mesh: jax.sharding.Mesh, rules: sharding.Rules) -> dict[str, np.ndarray]:
    """STEPS Adam steps under `mesh`, as the train loop does them: the optimizer sees only the
    trainable (adapter) arrays. Returns, flat by path and gathered to the host, the final params
    ("param/<path>"), the first step's gradients ("grad/<path>") and the losses ("loss")."""
    host = init_params()
    full_sh = sharding.param_shardings(host, mesh, rules)
    mask = peft.trainable_mask(host)
    t_sh, f_sh = (
        jax.tree.map(lambda s, m, keep=keep: s if m == keep else None, full_sh, mask)
        for keep in (True, False)
    )
    host_t, host_f = peft.split_trainable(host)
    trainable, frozen = jax.tree.map(put, host_t, t_sh), jax.tree.map(put, host_f, f_sh)
    tx = optax.adam(1e-2)
    o_sh = sharding.opt_state_shardings(jax.eval_shape(tx.init, trainable), trainable, t_sh, mesh)
    opt_state = jax.jit(tx.init, out_shardings=o_sh)(trainable)
    b_sh = sharding.batch_sharding(mesh, rules)
    host_batch = make_batch()
    rows = distributed.process_rows(b_sh, BATCH)
    batch = distributed.global_batch({k: v[rows] for k, v in host_batch.items()}, b_sh, BATCH)

    def step(trainable, opt_state, frozen, batch):
        loss, grads = jax.value_and_grad(lambda t: loss_fn(peft.combine(t, frozen), batch))(
            trainable
        )
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss, grads

    with sharding.use_mesh(mesh, rules):
        step = jax.jit(
            step,
            in_shardings=(t_sh, o_sh, f_sh, b_sh),
            out_shardings=(t_sh, o_sh, sharding.replicated(mesh), t_sh),
            donate_argnums=(0, 1),
        )
        losses, first_grads = [], None
        for _ in range(STEPS):
            trainable, opt_state, loss, grads = step(trainable, opt_state, frozen, batch)
            losses.append(float(loss))
            first_grads = grads if first_grads is None else first_grads
    out = flat("param", distributed.gather_to_host(peft.combine(trainable, frozen)))
    out.update(flat("grad", distributed.gather_to_host(first_grads)))
    out["loss"] = np.array(losses)
    return out


def flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/{sharding.params.path_name(kp)}": np.asarray(v)
        for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def put(x: np.ndarray, s: jax.sharding.Sharding) -> jax.Array:
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])


def main(args: argparse.Namespace) -> None:
    if args.procs > 1:
        distributed.initialize(
            {
                "coordinator_address": f"127.0.0.1:{args.port}",
                "num_processes": args.procs,
                "process_id": args.pid,
                "initialization_timeout": 60,
            }
        )
    results: dict[str, np.ndarray] = {}
    for item in args.mesh:
        name, spec = item.split("=")
        shape, _, topology = spec.partition(":")
        dims = tuple(int(s) for s in shape.split(","))
        n = int(np.prod(dims))
        mesh = sharding.make_mesh(dims, devices=jax.devices()[:n])
        run = train(mesh, sharding.rules_for(topology or "fsdp_tp"))
        results.update({f"{name}|{k}": v for k, v in run.items()})
    if distributed.is_main():
        np.savez(args.out, **results)
    distributed.barrier("done")


if __name__ == "__main__":
    main(ARGS)
    sys.exit(0)
