"""LoRA-DPO step throughput and peak memory on SmolLM2-135M on CPU: jaxtune vs trl's DPOTrainer.

    .venv/bin/python scripts/bench_dpo.py [--pairs 2 --seq 128 --rank 16 --rounds 5 --steps 3]

Same weights (the embedded SmolLM2-135M-Instruct GGUF, dequantized to fp32 for both), the same
pairs of random tokens (prompt seq/2 tokens, chosen and rejected completions of seq/2 tokens
each: no padding on either side), LoRA rank 16 (alpha 32) on every linear layer, sigmoid DPO
with beta 0.1, the reference = the same model with the adapters off (no second copy on either
side), AdamW, fp32, 2 threads. A step: chosen and rejected through the policy in one batch
(forward + backward), the same batch through the reference (forward), the optimizer update.
  jaxtune   the `dpo` stage's jitted train step (what `jaxtune train` runs)
  trl       DPOTrainer.training_step (its _compute_loss: concatenated forward, reference forward
            under use_adapter/disable) + the trainer's optimizer step, on a batch made by its
            own collator (DataCollatorForPreference)
Speed: both set up in this process, timed in alternating rounds (the machine is shared and
noisy); tokens/s counts the 2 x pairs x seq tokens the policy sees per step. Memory: each side
alone in a fresh subprocess: peak RSS (VmHWM) of the whole run, and of the train steps alone
(after setup and the first step; freed heap trimmed, VmHWM reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
THREADS = 2
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
)

import numpy as np  # noqa: E402

MB = 1024 * 1024


# ----------------------------------------------------------------------------- data
def make_pairs(args, vocab: int) -> list[dict[str, list[int]]]:
    """Pairs of random tokens: prompt seq/2, chosen and rejected seq/2 each (no padding)."""
    rng = np.random.default_rng(0)
    half = args.seq // 2
    return [
        {
            "prompt_ids": rng.integers(10, vocab, half).tolist(),
            "chosen_ids": rng.integers(10, vocab, args.seq - half).tolist(),
            "rejected_ids": rng.integers(10, vocab, args.seq - half).tolist(),
        }
        for _ in range(args.pairs)
    ]


def jaxtune_batch(pairs: list[dict]) -> dict[str, np.ndarray]:
    """The batch contract's preference batch of the pairs (targets = next tokens)."""
    out = {}
    for side in ("chosen", "rejected"):
        ids = np.array([p["prompt_ids"] + p[f"{side}_ids"] for p in pairs], np.int32)
        b, t = ids.shape
        prompt = len(pairs[0]["prompt_ids"])
        targets = np.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        mask = np.zeros((b, t), np.float32)
        mask[:, prompt - 1 : t - 1] = 1.0  # positions that predict completion tokens
        out.update(
            {
                f"{side}_input_ids": ids,
                f"{side}_targets": targets,
                f"{side}_loss_mask": mask,
                f"{side}_segment_ids": np.ones((b, t), np.int32),
                f"{side}_positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            }
        )
    return out


# ----------------------------------------------------------------------------- the two sides
def jaxtune_side(path: str, args):
    """(one step -> loss, run) for jaxtune's dpo stage."""
    import jax
    import jax.numpy as jnp

    from jaxtune import sharding
    from jaxtune.train import build_run
    from jaxtune.train.config import default_config
    from jaxtune.train.loop import init_state, state_shardings
    from jaxtune.train.state import TrainState
    from jaxtune.train.step import make_train_step

    config = default_config()
    config.stage = "dpo"
    config.model.path = path
    config.dpo.beta = 0.1
    config.peft.method = "lora"
    config.peft.rank = args.rank
    config.peft.alpha = 2.0 * args.rank
    config.optim.lr = 1e-4
    config.optim.max_grad_norm = 0.0
    config.train.steps = 1000
    config.train.batch_size = args.pairs
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
    batch = jax.tree.map(jnp.asarray, jaxtune_batch(make_pairs(args, run.model.config.vocab_size)))
    box = {"state": state}

    def one() -> float:
        box["state"], metrics = step(box["state"], run.frozen, batch)
        return float(metrics["loss"])

    return one, run


def save_fp32(path: str) -> str:
    """The model's weights (the embedded GGUF dequantized) as an fp32 HF checkpoint with its
    tokenizer, for trl."""
    import jax
    import jax.numpy as jnp

    from jaxtune import models

    directory = tempfile.mkdtemp(prefix="bench_dpo_")
    model, params = models.load(path, jnp.float32)
    models.save(directory, model, jax.device_get(params))
    models.load_tokenizer(path).save_pretrained(directory)
    return directory


def trl_side(directory: str, args):
    """(one step -> loss) for trl's DPOTrainer on the same weights and pairs."""
    import logging

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 4)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_dpo_trl_"),
        per_device_train_batch_size=args.pairs,
        learning_rate=1e-4,
        max_grad_norm=0.0,
        beta=0.1,
        loss_type=["sigmoid"],
        max_length=None,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        logging_strategy="no",
        save_strategy="no",
    )
    lora = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear"
    )
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=text, processing_class=tokenizer, peft_config=lora
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets per step
    inputs = trainer.data_collator(make_pairs(args, model.config.vocab_size))
    trainer.model.train()

    def one() -> float:
        loss = trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return one


# ----------------------------------------------------------------------------- memory
def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_hwm() -> None:
    """Return freed heap to the OS, then reset VmHWM to the current RSS."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def child(side: str, path: str, fp32_dir: str, args) -> None:
    """One side alone: setup, a first step, then `--steps` steps; print a RESULT line."""
    if side == "jaxtune":
        from jaxtune.cli.main import enable_compilation_cache

        enable_compilation_cache()
        one, _ = jaxtune_side(path, args)
    else:
        one = trl_side(fp32_dir, args)
    one()
    setup_peak = status_mb("VmHWM")
    reset_hwm()
    t = time.perf_counter()
    for _ in range(args.steps):
        one()
    step_s = (time.perf_counter() - t) / args.steps
    steps_peak = status_mb("VmHWM")
    print("RESULT " + json.dumps(dict(peak=setup_peak, steps_peak=steps_peak, step_s=step_s)))


def measure_memory(side: str, path: str, fp32_dir: str, args) -> dict:
    command = [sys.executable, __file__, "--child", side, "--fp32-dir", fp32_dir]
    command += ["--model", path, "--pairs", str(args.pairs), "--seq", str(args.seq)]
    command += ["--rank", str(args.rank), "--steps", str(args.steps), "--remat", args.remat]
    command += ["--loss-chunk", str(args.loss_chunk)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{side} child failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def timed(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--remat", default="dots")
    parser.add_argument("--loss-chunk", type=int, default=512)
    parser.add_argument("--model", default="", help="default: the embedded SmolLM2-135M")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["jaxtune", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--fp32-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from jaxtune.hub import smollm2_path

    path = args.model or str(smollm2_path())
    if args.child:
        child(args.child, path, args.fp32_dir, args)
        return 0

    from jaxtune.cli.main import enable_compilation_cache

    enable_compilation_cache()
    fp32_dir = save_fp32(path)
    jx, _ = jaxtune_side(path, args)
    t = time.perf_counter()
    loss_j = jx()
    print(f"jaxtune first step (compile + run): {time.perf_counter() - t:.1f}s, loss {loss_j:.4f}")
    tr = trl_side(fp32_dir, args)
    loss_t = tr()
    print(f"trl first step: loss {loss_t:.4f} (same weights and pairs; log 2 = 0.6931)")
    tokens = 2 * args.pairs * args.seq
    times_j, times_t = [], []
    for r in range(args.rounds):
        times_j.append(timed(jx, args.steps))
        times_t.append(timed(tr, args.steps))
        print(
            f"round {r + 1}: jaxtune {tokens / times_j[-1]:7.1f} tok/s   "
            f"trl {tokens / times_t[-1]:7.1f} tok/s",
            flush=True,
        )
    j, t_ = statistics.median(times_j), statistics.median(times_t)
    print()
    print(
        f"setup: {args.pairs} pairs x T={args.seq} (chosen + rejected: {tokens} tokens/step), "
        f"LoRA r={args.rank} all-linear, sigmoid beta=0.1, reference = adapters off, fp32, "
        f"{THREADS} threads; jaxtune remat={args.remat}, loss_chunk={args.loss_chunk}"
    )
    print(f"jaxtune: {tokens / j:8.1f} tok/s (median; best {tokens / min(times_j):.1f})")
    print(f"trl:     {tokens / t_:8.1f} tok/s (median; best {tokens / min(times_t):.1f})")
    print(f"jaxtune / trl speed: {t_ / j:.2f}x (median step times, alternating rounds)")
    if not args.skip_memory:
        mem = {side: measure_memory(side, path, fp32_dir, args) for side in ("jaxtune", "trl")}
        print()
        print("peak RSS, each side alone in a fresh process (MiB):")
        print(f"{'':9s} {'whole run':>10s} {'steps only':>11s}")
        for side, m in mem.items():
            print(f"{side:9s} {m['peak']:10.0f} {m['steps_peak']:11.0f}")
        print(
            f"jaxtune / trl: whole run {mem['jaxtune']['peak'] / mem['trl']['peak']:.2f}, "
            f"steps only {mem['jaxtune']['steps_peak'] / mem['trl']['steps_peak']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
