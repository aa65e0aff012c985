"""LoRA-SFT throughput, MFU and memory of ~1B and 8B-shaped Llamas (random weights) on one GPU,
with the attention implementations side by side. Run by scripts/gpu_check.sh (< 5 min on an H200).

    python scripts/gpu_check.py --out results.json [--budget 270] [--smoke]

Each run: bf16 base weights, LoRA rank 16 (alpha 32) on every linear layer (fp32 adapters, the
only trainable arrays), AdamW, a packed batch (4 documents per row, segment ids, loss mask),
compute in bf16, STEPS timed steps after WARMUP.

MFU convention (stated in the results): MFU = 6 * N * tokens/s / peak, N = all base-model
parameters (embeddings included), peak = the GPU's dense bf16 FLOP/s (H200/H100 SXM: 989.5e12).
6N counts a full training step (forward 2N, backward 4N); LoRA skips the frozen weights' gradient
(about 2N), remat recomputes the forward (2N more with remat=full), attention FLOPs are not
counted: it is the usual headline number, not hardware utilisation.
Memory: the compiled step's own footprint (arguments + temporaries, XLA's memory analysis) and
the device's peak bytes in use after the run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import peft
from jaxtune.models import CausalLM, ModelConfig, RopeConfig

PEAK_BF16 = {"H200": 989.5e12, "H100": 989.5e12, "A100": 312e12, "L4": 121e12}
STEPS, WARMUP = 8, 2

LLAMA_1B = ModelConfig(  # Llama-3.2-1B shapes
    family="llama",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    tie_embeddings=True,
    rope=RopeConfig(theta=500000.0),
)
LLAMA_8B = ModelConfig(  # Llama-3-8B shapes
    family="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rope=RopeConfig(theta=500000.0),
)
TINY = ModelConfig(
    family="llama",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
)

# (name, config, batch, seq, remat, attention impls); most informative first (time budget).
RUNS = [
    ("llama-8b", LLAMA_8B, 2, 4096, "full", ("cudnn", "reference")),
    ("llama-1b", LLAMA_1B, 4, 4096, "none", ("cudnn", "xla", "reference")),
]
SMOKE_RUNS = [("tiny", TINY, 2, 128, "none", ("cudnn", "xla", "reference", "s2"))]


def param_count(cfg: ModelConfig) -> int:
    shapes = CausalLM(cfg).param_shapes()
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return int(sum(math.prod(s) for s in leaves))


def packed_batch(batch: int, seq: int, vocab: int, docs: int = 4) -> dict[str, jax.Array]:
    """input_ids/targets/loss_mask/segment_ids/positions per the batch contract."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    seg = np.repeat(np.arange(1, docs + 1), seq // docs)[None].repeat(batch, 0).astype(np.int32)
    seg = np.pad(seg, ((0, 0), (0, seq - seg.shape[1])))
    pos = np.zeros_like(seg)
    for d in range(1, docs + 1):
        where = seg == d
        pos[where] = (np.cumsum(where, axis=1) - 1)[where]
    same = (seg == np.roll(seg, -1, axis=1)) & (seg > 0)
    same[:, -1] = False
    batch_np = dict(
        input_ids=ids,
        targets=np.roll(ids, -1, axis=1),
        loss_mask=same.astype(np.float32),
        segment_ids=seg,
        positions=pos,
    )
    return {k: jnp.asarray(v) for k, v in batch_np.items()}


def one_run(cfg: ModelConfig, batch: int, seq: int, remat: str, impl: str) -> dict[str, Any]:
    model = CausalLM(cfg, compute_dtype=jnp.bfloat16, remat=remat, attention_impl=impl)
    params = jax.jit(lambda key: model.init(key, jnp.bfloat16))(jax.random.PRNGKey(0))
    params = peft.lora(params, "all-linear", rank=16, alpha=32.0, rng=jax.random.PRNGKey(1))
    trainable, frozen = peft.split_trainable(params)
    del params
    tx = optax.adamw(1e-4)
    opt_state = tx.init(trainable)
    data = packed_batch(batch, seq, cfg.vocab_size)

    def loss_fn(trainable, frozen, b):
        logits = model.apply(
            peft.combine(trainable, frozen),
            b["input_ids"],
            positions=b["positions"],
            segment_ids=b["segment_ids"],
            attention_mask=b["segment_ids"] > 0,
        )
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, b["targets"][..., None], axis=-1)[..., 0]
        return jnp.sum(nll * b["loss_mask"]) / jnp.maximum(jnp.sum(b["loss_mask"]), 1.0)

    def step(trainable, opt_state, frozen, b):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, b)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    t0 = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(trainable, opt_state, frozen, data).compile()
    )
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    losses = []
    for _ in range(WARMUP):
        trainable, opt_state, loss = compiled(trainable, opt_state, frozen, data)
        losses.append(float(loss))
    t0 = time.perf_counter()
    for _ in range(STEPS):
        trainable, opt_state, loss = compiled(trainable, opt_state, frozen, data)
    losses.append(float(loss))  # blocks on the last step
    step_s = (time.perf_counter() - t0) / STEPS
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(batch * seq / step_s, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "step_memory_gib": round(
            (getattr(mem, "argument_size_in_bytes", 0) + getattr(mem, "temp_size_in_bytes", 0))
            / 2**30,
            2,
        ),
        "device_peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
    }


def peak_flops(device: jax.Device) -> tuple[float, str]:
    kind = getattr(device, "device_kind", "")
    for name, flops in PEAK_BF16.items():
        if name in kind:
            return flops, name
    return PEAK_BF16["H200"], f"{kind} (assumed H200 peak)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check_results.json")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds; later runs skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, any backend (CI)")
    args = ap.parse_args()
    start = time.perf_counter()
    device = jax.devices()[0]
    peak, peak_name = peak_flops(device)
    results: dict[str, Any] = {
        "device": f"{device.platform} {getattr(device, 'device_kind', '')}",
        "jax": jax.__version__,
        "mfu_convention": (
            f"MFU = 6 * N * tokens/s / {peak:.4g} FLOP/s ({peak_name} dense bf16); N = all "
            "base-model params incl. embeddings; attention FLOPs not counted; LoRA and remat "
            "not adjusted for"
        ),
        "runs": [],
    }
    for name, cfg, batch, seq, remat, impls in SMOKE_RUNS if args.smoke else RUNS:
        n_params = param_count(cfg)
        for impl in impls:
            entry: dict[str, Any] = {
                "model": name,
                "params": n_params,
                "batch": batch,
                "seq": seq,
                "remat": remat,
                "attention": impl,
            }
            elapsed = time.perf_counter() - start
            if elapsed > args.budget:
                entry["skipped"] = f"time budget ({elapsed:.0f} s > {args.budget:.0f} s)"
            else:
                try:
                    entry.update(one_run(cfg, batch, seq, remat, impl))
                    entry["mfu_6n"] = round(6 * n_params * entry["tokens_per_s"] / peak, 4)
                except Exception as e:  # one failing kernel must not hide the others
                    entry["error"] = f"{type(e).__name__}: {str(e)[:500]}"
                    traceback.print_exc()
            results["runs"].append(entry)
            print(json.dumps(entry), flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    results["total_s"] = round(time.perf_counter() - start, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out} in {results['total_s']} s")


if __name__ == "__main__":
    main()
