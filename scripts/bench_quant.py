"""NF4 base storage and peak host memory of a QLoRA train step: jaxtune vs PEFT + bitsandbytes.

    .venv/bin/python scripts/bench_quant.py                # SmolLM2-135M shapes, B=4, T=128, r=16
    .venv/bin/python scripts/bench_quant.py --layers 4     # quicker

One random checkpoint with SmolLM2-135M's shapes (llama, 30 layers, hidden 576, MLP 1536, tied
49152-token embeddings) is written in bf16 safetensors. Each side then runs in its own fresh
subprocess, alternating (`--rounds`), with the same batch and next-token loss:
  jaxtune   quant.load_quantized (NF4, double quant, layer by layer) -> peft.lora(all-linear)
            -> a jitted fwd + bwd + Adam step on the adapters (compiled before measuring)
  peft+bnb  transformers from_pretrained(BitsAndBytesConfig nf4, double quant) -> peft LoRA
            (all-linear) -> fwd + bwd + AdamW step
both in float32 compute on CPU, without gradient checkpointing. Reported per side: bytes per
parameter of the quantized linear weights as stored, peak RSS (VmHWM) over the whole run
(load included) and over the train steps alone (after loading and compiling: freed heap trimmed
with malloc_trim, VmHWM reset through /proc/self/clear_refs), and the ratio jaxtune / peft.
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

MB = 1024 * 1024


def smollm2_config(layers: int):
    """SmolLM2-135M's architecture as a checkpoint config.json would give it."""
    from jaxtune.models.families import family_for

    hf = dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    )
    return family_for("llama").config_from_hf(hf)


def write_checkpoint(directory: Path, layers: int) -> None:
    import jax
    import jax.numpy as jnp

    from jaxtune.models import CausalLM, save

    model = CausalLM(smollm2_config(layers))
    params = model.init(jax.random.key(0), jnp.bfloat16)
    save(directory, model, params, dtype=jnp.bfloat16)


# ----------------------------------------------------------------------------- memory
def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmHWM: peak RSS, VmRSS: current), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def hwm_mb() -> float:
    return status_mb("VmHWM")


def reset_hwm() -> None:
    """Hand freed heap back to the OS (glibc keeps e.g. the compiler's scratch memory resident),
    then reset VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------- children
def run_jaxtune(directory: str, batch: int, seq: int, rank: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxtune import peft, quant

    model, params = quant.load_quantized(directory, method="nf4", compute_dtype="float32")
    leaves = jax.tree.leaves(params, is_leaf=quant.is_quantized)
    qleaves = [x for x in leaves if quant.is_quantized(x)]
    stored = sum(x.nbytes for x in qleaves)
    count = sum(int(np.prod(x.shape)) for x in qleaves)
    load_peak = hwm_mb()

    params = peft.lora(params, "all-linear", rank=rank, alpha=2 * rank, rng=jax.random.key(0))
    trainable, frozen = peft.split_trainable(params)
    optimizer = optax.adam(1e-4)
    opt_state = optimizer.init(trainable)

    def loss_fn(trainable, ids):
        logits = model.apply(peft.combine(trainable, frozen), ids[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    def step(trainable, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, ids)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 49152, (batch, seq + 1)), jnp.int32)
    compiled = jax.jit(step).lower(trainable, opt_state, ids).compile()
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / MB
    reset_hwm()
    before = status_mb("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainable, opt_state, loss = compiled(trainable, opt_state, ids)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return dict(
        stored_bytes=stored,
        quantized_params=count,
        load_peak_mb=load_peak,
        rss_before_step_mb=before,
        step_peak_mb=hwm_mb(),
        xla_temp_mb=temp_mb,
        run_peak_mb=hwm_mb_total(),
        step_s=statistics.median(times),
        loss=float(loss),
    )


def run_peft(directory: str, batch: int, seq: int, rank: int, steps: int) -> dict:
    import numpy as np
    import torch
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        directory, quantization_config=bnb, dtype=torch.float32, device_map="cpu"
    )
    stored, count = 0, 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            state = module.weight.quant_state
            stored += module.weight.data.nbytes
            stored += sum(
                t.nbytes for t in state.as_dict(packed=True).values() if torch.is_tensor(t)
            )
            count += int(np.prod(state.shape))
    load_peak = hwm_mb()

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.tensor(np.random.default_rng(0).integers(0, 49152, (batch, seq + 1)))
    temp_mb = float("nan")
    reset_hwm()
    before = status_mb("VmRSS")
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return dict(
        stored_bytes=stored,
        quantized_params=count,
        load_peak_mb=load_peak,
        rss_before_step_mb=before,
        step_peak_mb=hwm_mb(),
        xla_temp_mb=temp_mb,
        run_peak_mb=hwm_mb_total(),
        step_s=statistics.median(times),
        loss=float(loss),
    )


def hwm_mb_total() -> float:
    """Peak RSS over the whole process life (ru_maxrss is not reset by clear_refs), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CHILDREN = {"jaxtune": run_jaxtune, "peft+bnb": run_peft}


def child(args: argparse.Namespace) -> None:
    result = CHILDREN[args.child](args.dir, args.batch, args.seq, args.rank, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(name: str, directory: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", name, "--dir", str(directory)]
    command += ["--batch", str(args.batch), "--seq", str(args.seq), "--rank", str(args.rank)]
    command += ["--steps", str(args.steps)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each side")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "smollm2-shapes"
        write_checkpoint(directory, args.layers)
        results: dict[str, list[dict]] = {name: [] for name in CHILDREN}
        for _ in range(args.rounds):
            for name in CHILDREN:
                results[name].append(spawn(name, directory, args))

    print(
        f"SmolLM2-135M shapes, {args.layers} layers; QLoRA nf4 + double quant, LoRA r={args.rank} "
        f"all-linear; batch {args.batch} x {args.seq}; fp32 compute on CPU; {args.rounds} round(s)"
    )
    keys = ("bytes/param", "load peak MiB", "RSS pre-step", "step peak MiB", "run peak MiB")
    keys += ("step s",)
    print(f"{'':10s}" + "".join(f"{k:>15s}" for k in keys))
    summary = {}
    for name, runs in results.items():
        row = {
            "bytes/param": runs[0]["stored_bytes"] / runs[0]["quantized_params"],
            "load peak MiB": statistics.median(r["load_peak_mb"] for r in runs),
            "RSS pre-step": statistics.median(r["rss_before_step_mb"] for r in runs),
            "step peak MiB": statistics.median(r["step_peak_mb"] for r in runs),
            "run peak MiB": statistics.median(r["run_peak_mb"] for r in runs),
            "step s": statistics.median(r["step_s"] for r in runs),
        }
        summary[name] = row
        print(f"{name:10s}" + "".join(f"{row[k]:15.3f}" for k in keys))
    ours, theirs = summary["jaxtune"], summary["peft+bnb"]
    print(f"{'ratio':10s}" + "".join(f"{ours[k] / theirs[k]:15.3f}" for k in keys))
    temp = statistics.median(r["xla_temp_mb"] for r in results["jaxtune"])
    print(f"jaxtune step: XLA temporaries {temp:.1f} MiB (compiled memory analysis)")
    print("bf16 base: 2.000 bytes/param (aim for NF4 + double quant: <= 0.52)")


if __name__ == "__main__":
    main()
