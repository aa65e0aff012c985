"""LoRA-SFT training throughput on SmolLM2-135M on CPU: jaxtune vs transformers + peft.

    .venv/bin/python scripts/bench_train.py [--batch 4 --seq 128 --rank 16 --rounds 5 --steps 3]

Same weights (the embedded SmolLM2-135M-Instruct, dequantized to fp32), same random batch,
LoRA rank 16 (alpha 32) on every linear layer, AdamW, fp32, 2 threads. The two are timed in
alternating rounds (this machine is shared and noisy); each round times `--steps` optimizer
steps. A plain fp32 matmul is timed in the same run as the machine's reachable peak.

FLOP convention: LoRA training costs 4N FLOP per token, N = the parameters that take part in
matmuls (all 134.5M of SmolLM2, the tied embedding counted once as the LM head): 2N forward
plus 2N for the gradient of the activations; the frozen base needs no weight gradient. The
adapters' own FLOPs (~4% more) and attention scores are not counted (conservative).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
THREADS = 2
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def jaxtune_step(path: str, args) -> tuple:
    """(run one step -> loss, number of matmul params) for jaxtune."""
    from jaxtune import sharding
    from jaxtune.train import build_run
    from jaxtune.train.config import default_config
    from jaxtune.train.loop import init_state, state_shardings
    from jaxtune.train.state import TrainState
    from jaxtune.train.step import make_train_step

    config = default_config()
    config.model.path = path
    config.peft.method = "lora"
    config.peft.rank = args.rank
    config.peft.alpha = 2.0 * args.rank
    config.optim.lr = 1e-4
    config.optim.max_grad_norm = 0.0
    config.train.steps = 1000
    config.train.batch_size = args.batch
    config.train.seq_len = args.seq
    config.train.remat = args.remat
    config.train.loss_chunk = args.loss_chunk
    run = build_run(config, quiet=True)
    shapes = jax.eval_shape(
        lambda p: TrainState.create(p, run.optimizer, jax.random.PRNGKey(0)), run.trainable
    )
    st_sh = state_shardings(run, shapes)
    state = init_state(run, st_sh)
    step = make_train_step(
        run.model,
        run.stage,
        run.optimizer,
        batch_sharding=sharding.batch_sharding(run.mesh, run.rules),
        rules=run.rules,
        state_shardings=st_sh,
        frozen_shardings=run.frozen_shardings,
        combine=run.combine,
    )
    batch = make_batch(args, run.model.config.vocab_size)
    batch = jax.tree.map(jnp.asarray, batch)
    box = {"state": state}

    def one() -> float:
        box["state"], metrics = step(box["state"], run.frozen, batch)
        return float(metrics["loss"])

    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.frozen)) if run.frozen else 0
    return one, n, run


def make_batch(args, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (args.batch, args.seq + 1)).astype(np.int32)
    return dict(
        input_ids=ids[:, :-1],
        targets=ids[:, 1:],
        loss_mask=np.ones((args.batch, args.seq), np.float32),
        segment_ids=np.ones((args.batch, args.seq), np.int32),
        positions=np.broadcast_to(np.arange(args.seq, dtype=np.int32), (args.batch, args.seq)),
    )


def torch_step(run, args) -> tuple:
    """(run one step -> loss) for transformers + peft on the same weights and batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from jaxtune import models, peft

    torch.set_num_threads(THREADS)
    directory = tempfile.mkdtemp()
    base = peft.disable(run.combine(run.trainable, run.frozen))
    models.save(directory, run.model, jax.device_get(base))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear"
    )
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(args, run.model.config.vocab_size)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    targets = torch.tensor(batch["targets"], dtype=torch.long).reshape(-1)

    def one() -> float:  # the same loss as jaxtune's: every position predicts its target
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return one


def matmul_peak(m: int = 1024) -> float:
    """FLOP/s of a plain fp32 (m x m) @ (m x m) matmul in XLA (best of several)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(m, m)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).normal(size=(m, m)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * m**3 / best


def timed(fn, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step."""
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps, (time.process_time() - cpu) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--remat", default="dots")
    parser.add_argument("--loss-chunk", type=int, default=512)
    parser.add_argument("--model", default="", help="default: the embedded SmolLM2-135M")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    from jaxtune.cli.main import enable_compilation_cache
    from jaxtune.hub import smollm2_path

    enable_compilation_cache()
    path = args.model or str(smollm2_path())
    jx, n_params, run = jaxtune_step(path, args)
    t = time.perf_counter()
    loss_j = jx()
    print(f"jaxtune first step (compile + run): {time.perf_counter() - t:.1f}s, loss {loss_j:.4f}")
    pt = None
    if not args.skip_torch:
        pt = torch_step(run, args)
        loss_t = pt()
        print(f"peft first step: loss {loss_t:.4f} (same weights and batch)")
    tokens = args.batch * args.seq
    times_j, times_t, cpu_j, cpu_t, peaks = [], [], [], [], []
    for r in range(args.rounds):
        peaks.append(matmul_peak())
        wall, cpu = timed(jx, args.steps)
        times_j.append(wall)
        cpu_j.append(cpu)
        if pt is not None:
            wall, cpu = timed(pt, args.steps)
            times_t.append(wall)
            cpu_t.append(cpu)
        line = f"round {r + 1}: jaxtune {tokens / times_j[-1]:7.1f} tok/s"
        if pt is not None:
            line += f"   peft {tokens / times_t[-1]:7.1f} tok/s"
        print(line, flush=True)

    j, j_best = statistics.median(times_j), min(times_j)
    peak = max(peaks)
    flop_per_token = 4 * n_params
    print()
    print(
        f"setup: B={args.batch} T={args.seq} LoRA r={args.rank} all-linear, fp32, "
        f"{THREADS} threads, remat={args.remat}, loss_chunk={args.loss_chunk}"
    )
    print(f"N = {n_params / 1e6:.1f}M matmul params; 4N = {flop_per_token / 1e9:.2f} GFLOP/token")
    print(f"plain fp32 matmul (1024^3, XLA): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"jaxtune: {tokens / j:8.1f} tok/s  {flop_per_token * tokens / j / 1e9:6.1f} GFLOP/s "
        f"= {100 * flop_per_token * tokens / j / peak:.0f}% of the matmul"
    )
    if pt is not None:
        t_ = statistics.median(times_t)
        print(
            f"peft:    {tokens / t_:8.1f} tok/s  {flop_per_token * tokens / t_ / 1e9:6.1f} GFLOP/s "
            f"= {100 * flop_per_token * tokens / t_ / peak:.0f}% of the matmul"
        )
        print(f"jaxtune / peft: {t_ / j:.2f}x (median step times, alternating rounds)")
        print(f"jaxtune / peft: {min(times_t) / j_best:.2f}x (best step times)")
        c_j, c_t = statistics.median(cpu_j), statistics.median(cpu_t)
        print(
            f"process CPU s/step: jaxtune {c_j:.2f}, peft {c_t:.2f}, ratio {c_t / c_j:.2f}x "
            "(steadier under load, unless torch's OpenMP threads spin: OMP_WAIT_POLICY=PASSIVE)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
