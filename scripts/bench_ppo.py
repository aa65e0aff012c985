"""PPO rollouts on SmolLM2-135M shapes: the compiled sampler vs a per-token Python loop, and
the generation / training time split of PPO steps.

    JAXTUNE_CACHE=.cache .venv/bin/python scripts/bench_ppo.py [--batch 8 --prompt 64 --new 32 \
        --runs 3 --rollouts 3 --skip-ppo --skip-sampler]

1. Rollout tokens/s. Both sample (temperature 1) from the embedded SmolLM2-135M-Instruct with
   the same prefill and the same one-token decode function over a KV cache; `compiled` is
   jaxtune.generate (the whole decode loop one `while_loop` in one jitted call), `python` calls
   a jitted one-token step from a Python loop and reads the rows' EOS flags back each token (as
   a stopping criterion must). EOS off, so both make exactly `--new` tokens per row. Runs
   alternate; medians of wall-clock time. Ratio > 1: the compiled loop is faster.
2. PPO step split: `jaxtune.train` of stage ppo (LoRA r16, the shipped arithmetic prompts,
   exact-match reward) for `--rollouts` rollouts of `--batch` prompts, 2 epochs x 2 minibatches;
   the last rollout's (compile-free) times: generation, reward, prepare (old/ref log-probs,
   values, GAE), and training (its 4 optimizer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.generate import SamplingConfig, generate, sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64, help="prompt length, tokens")
    parser.add_argument("--new", type=int, default=32, help="new tokens per row")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--skip-ppo", action="store_true")
    parser.add_argument("--skip-sampler", action="store_true")
    return parser.parse_args()


def python_loop_sampler(model, n_new: int):
    """A per-token Python loop over jitted prefill / one-token steps (same math and layouts as
    generate)."""
    from jaxtune.models.decoder import unstack_cache, unstack_layers

    config = SamplingConfig(temperature=1.0)
    unstack, unstack_c = jax.jit(unstack_layers), jax.jit(unstack_cache)

    @jax.jit
    def prefill(params, ids, mask, rng):
        cache = model.init_cache(ids.shape[0], ids.shape[1] + n_new, jnp.float32)
        hidden, cache = model.hidden_states(params, ids, attention_mask=mask, cache=cache)
        token, _ = sample(model.logits(params, hidden[:, -1]), rng, config)
        return token, cache

    @jax.jit
    def step(params, token, cache, rng):
        b = token.shape[0]
        hidden, cache = model.hidden_states(
            params, token[:, None], attention_mask=jnp.ones((b, 1), bool), cache=cache
        )
        token, _ = sample(model.logits(params, hidden[:, 0]), rng, config)
        return token, cache, jnp.zeros((b,), bool)  # EOS flags (EOS is off here)

    def run(params, ids, mask, rng):
        keys = jax.random.split(rng, n_new)
        token, cache = prefill(params, ids, mask, keys[0])
        loop_params = unstack(params)  # the layouts generate's loop uses (per-layer buffers)
        if loop_params is not params:
            cache = unstack_c(cache)
        tokens = [token]
        for i in range(1, n_new):
            token, cache, done = step(loop_params, token, cache, keys[i])
            tokens.append(token)
            if bool(done.all()):  # the host reads the stopping flags every token
                break
        return jnp.stack(tokens, axis=1)

    return run


def bench_sampler(args, model, params) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 40000, (args.batch, args.prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    loop = python_loop_sampler(model, args.new)

    def compiled(key):
        out = generate(
            model,
            params,
            ids,
            mask,
            max_new_tokens=args.new,
            temperature=1.0,
            rng=key,
            eos_ids=(),
            bucket=False,
        )
        return out.tokens

    runners = {"compiled": compiled, "python": lambda key: loop(params, ids, mask, key)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():  # warm-up: compile
        jax.block_until_ready(fn(jax.random.key(0)))
    for r in range(args.runs):
        for name, fn in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(r + 1)))
            times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"rollout sampling, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens:")
    for name in runners:
        print(f"  {name:9s} {tokens / med[name]:8.1f} tokens/s  (median {med[name]:.3f} s)")
    print(f"  compiled / python speed: {med['python'] / med['compiled']:.2f}x")


def bench_ppo_split(args) -> None:
    from jaxtune.cli.config_flags import load_config_file
    from jaxtune.train import train

    root = Path(__file__).resolve().parents[1]
    config = load_config_file(root / "configs" / "ppo_lora.py")
    with tempfile.TemporaryDirectory() as out:
        config.output_dir = out
        config.train.batch_size = args.batch
        config.train.seq_len = args.prompt
        config.ppo.max_new_tokens = args.new
        config.ppo.ppo_epochs, config.ppo.num_minibatches = 2, 2
        config.train.steps = 4 * args.rollouts
        config.train.save_every = 0
        config.train.log_every = 1
        config.log.tensorboard = False
        train(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "time/train_s" in r][-1]
    parts = {
        "generation": last["time/generation_s"],
        "reward": last["time/reward_s"],
        "prepare (old/ref log-probs, values, GAE)": last["time/prepare_s"],
        "training (4 minibatch steps)": last["time/train_s"],
    }
    total = sum(parts.values())
    print(f"PPO rollout of {args.batch} prompts x {args.new} tokens (LoRA r16, SmolLM2-135M):")
    for name, seconds in parts.items():
        print(f"  {name:42s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print(f"  generated tokens/s in the rollout: {last['generated_tokens_per_s']:.1f}")


def main() -> None:
    args = parse_args()
    from jaxtune import models
    from jaxtune.hub.smollm2 import smollm2_path

    model, params = models.load(str(smollm2_path()))
    print(f"devices: {jax.devices()}")
    if not args.skip_sampler:
        bench_sampler(args, model, params)
    if not args.skip_ppo:
        bench_ppo_split(args)


if __name__ == "__main__":
    main()
