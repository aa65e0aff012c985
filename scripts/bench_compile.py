"""Compile seconds of a train step (masked LM loss, grads, Adam) at 2, 8 and 32 decoder layers.

    .venv/bin/python scripts/bench_compile.py [--layers 2 8 32] [--repeats 2] [--remat none]

Layers run under `lax.scan`, so the compiled program holds one layer body whatever the depth:
compile time should stay roughly flat. Shapes are SmolLM2-135M's (width 576, 9 heads, 3 KV
heads, vocab 49152) with the depth changed; params are abstract (nothing is allocated), the
step is lowered and compiled for the default backend. Depths alternate across repeats and the
fastest compile of each is reported, with its ratio to the shallowest.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from jaxtune.models import CausalLM, ModelConfig, RopeConfig

SMOLLM2 = ModelConfig(
    family="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    tie_embeddings=True,
    rope=RopeConfig(theta=100000.0),
)


def compile_seconds(layers: int, batch: int, seq: int, remat: str) -> float:
    model = CausalLM(SMOLLM2.replace(num_layers=layers), remat=remat)
    shapes = model.param_shapes()
    params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    tx = optax.adam(1e-4)
    opt_state = jax.eval_shape(tx.init, params)
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, seq), jnp.float32)

    def step(params, opt_state, ids, targets, mask):
        def loss_fn(p):
            logp = jax.nn.log_softmax(model.apply(p, ids))
            nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
            return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    jax.jit(step).lower(params, opt_state, ids, ids, mask).compile()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    args = ap.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    best: dict[int, float] = {}
    for r in range(args.repeats):
        for n in args.layers:
            s = compile_seconds(n, args.batch, args.seq, args.remat)
            best[n] = min(best.get(n, s), s)
            print(f"repeat {r}: {n:3d} layers  {s:6.2f} s", flush=True)
    base = best[args.layers[0]]
    print(f"\ncompile seconds, train step with scan ({jax.default_backend()}, remat={args.remat}):")
    for n in args.layers:
        print(
            f"  {n:3d} layers  {best[n]:6.2f} s   x{best[n] / base:.2f} vs {args.layers[0]} layers"
        )


if __name__ == "__main__":
    main()
