"""Step time of LoRA, DoRA and Houlsby adapters relative to a frozen forward/backward.

    .venv/bin/python scripts/bench_peft.py                 # SmolLM2-135M shapes, B=4, T=128, r=16
    .venv/bin/python scripts/bench_peft.py --layers 4      # quicker

Every step is jitted fwd + bwd + Adam on the trainable part (`peft.split_trainable`). "frozen" is
the same model with only the layers' input RMSNorm scales trainable: a full backward pass through
every layer, without weight gradients, which is the floor any adapter method pays. Configs run
side by side, alternating; the median and the best step time of each are printed with their
ratios to frozen (on a shared machine the best run is the least disturbed), and the compiled
step's temporary memory (XLA's own estimate, independent of load).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import peft
from jaxtune.models import CausalLM, ModelConfig, RopeConfig


def smollm2_config(layers: int) -> ModelConfig:
    return ModelConfig(
        family="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=layers,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope=RopeConfig(theta=100000.0),
    )


def methods(rank: int, bottleneck: int, rng: jax.Array) -> dict[str, Callable[[Any], Any]]:
    layers = 1 << 16  # more than any model: all of them
    return {
        "frozen": lambda p: peft.freeze(p, layers, trainable_modules=["input_layernorm"]),
        "lora": lambda p: peft.lora(p, "all-linear", rank=rank, alpha=2 * rank, rng=rng),
        "dora": lambda p: peft.dora(p, "all-linear", rank=rank, alpha=2 * rank, rng=rng),
        "houlsby": lambda p: peft.adapter(p, bottleneck=bottleneck, rng=rng),
    }


def make_step(model: CausalLM, optimizer: optax.GradientTransformation):
    def loss_fn(trainable, rest, ids):
        logits = model.apply(peft.combine(trainable, rest), ids[:, :-1])
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    @jax.jit
    def step(trainable, rest, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, rest, ids)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--bottleneck", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    model = CausalLM(smollm2_config(args.layers))
    rng = jax.random.PRNGKey(0)
    params = model.init(rng)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 49152, (args.batch, args.seq + 1)))
    optimizer = optax.adam(1e-4)
    step = make_step(model, optimizer)

    states, steps, temp = {}, {}, {}
    for name, transform in methods(args.rank, args.bottleneck, rng).items():
        trainable, rest = peft.split_trainable(transform(params))
        opt_state = optimizer.init(trainable)
        t0 = time.perf_counter()
        steps[name] = step.lower(trainable, rest, opt_state, ids).compile()
        temp[name] = steps[name].memory_analysis().temp_size_in_bytes
        trainable, opt_state, loss = steps[name](trainable, rest, opt_state, ids)
        jax.block_until_ready(loss)
        n_train = sum(x.size for x in jax.tree.leaves(trainable))
        print(
            f"{name:8s} compile+first step {time.perf_counter() - t0:6.1f}s  trainable {n_train:,d}"
        )
        states[name] = [trainable, rest, opt_state]

    times: dict[str, list[float]] = {name: [] for name in states}
    for _ in range(args.rounds):
        for name, state in states.items():  # alternate so load drifts hit every config alike
            t0 = time.perf_counter()
            state[0], state[2], loss = steps[name](state[0], state[1], state[2], ids)
            jax.block_until_ready(loss)
            times[name].append(time.perf_counter() - t0)

    print(
        f"\n{jax.devices()[0].platform}: {args.layers} layers, B={args.batch}, T={args.seq}, "
        f"r={args.rank}, bottleneck={args.bottleneck}, {args.rounds} rounds"
    )
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best = {name: min(ts) for name, ts in times.items()}
    header = ("median ms", "x frozen", "best ms", "x frozen", "temp MB")
    print(f"{'':8s} " + " ".join(f"{h:>9s}" for h in header))
    for name in times:
        print(
            f"{name:8s} {med[name] * 1e3:9.1f} {med[name] / med['frozen']:9.2f} "
            f"{best[name] * 1e3:9.1f} {best[name] / best['frozen']:9.2f} {temp[name] / 1e6:9.0f}"
        )
    print(
        f"DoRA / LoRA: median {med['dora'] / med['lora']:.2f}, "
        f"best {best['dora'] / best['lora']:.2f}"
    )


if __name__ == "__main__":
    main()
