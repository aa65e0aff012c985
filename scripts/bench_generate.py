"""Prefill and decode tokens/s: jaxtune vs transformers (PyTorch, CPU), SmolLM2-135M, greedy, fp32.

    JAXTUNE_CACHE=.cache .venv/bin/python scripts/bench_generate.py [--batch 4 --prompt 64 \
        --new 64 --runs 3 --threads 2 --random]

Both run the same weights (the embedded SmolLM2-135M-Instruct GGUF, dequantized to fp32, saved
with `jaxtune.models.save` for transformers; `--random` or a missing GGUF: random weights of the
same shapes) on the same left-padded prompt batch, EOS off, so both make exactly `--new` tokens.
Runs alternate between the two. Prefill = a generate of 1 new token (prompt forward + first
token); decode tokens/s = batch * (new - 1) / (time(new) - time(1)). Medians are printed, of
wall-clock time and of process CPU time (steadier on a shared machine). Ratios > 1: jaxtune
is faster. On a busy machine run with OMP_WAIT_POLICY=PASSIVE: torch's spinning OpenMP threads
otherwise collapse under contention (7x slower decode on a 2-core box at load 5), which would
flatter jaxtune.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64, help="longest prompt, tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per row")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random", action="store_true", help="random weights, not the GGUF")
    return parser.parse_args()


ARGS = parse_args()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true "
    f"intra_op_parallelism_threads={ARGS.threads}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import jaxtune.models as jm  # noqa: E402
from jaxtune.generate import generate  # noqa: E402
from jaxtune.models.families import family_for  # noqa: E402

SMOLLM2_CONFIG = {  # config.json of SmolLM2-135M(-Instruct)
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def load_models(directory: Path):
    """(jaxtune model, params, source name); the same weights saved to `directory` for HF."""
    model = params = None
    source = "random weights, SmolLM2-135M shapes"
    if not ARGS.random:
        try:
            from jaxtune.hub import smollm2_path

            path = smollm2_path()
            model, params = jm.load(path)
            source = f"{path.name} (dequantized to fp32)"
        except Exception as e:  # no loader or no file yet: fall back to random weights
            print(f"(GGUF unavailable: {type(e).__name__}: {e}; using random weights)")
    if model is None:
        model = jm.CausalLM(family_for("llama").config_from_hf(SMOLLM2_CONFIG))
        params = model.init(jax.random.key(0))
    jm.save(directory, model, params)
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return model, params, hf, source


def prompts(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded random prompts of lengths from prompt/2 to prompt."""
    rng = np.random.default_rng(0)
    b, p = ARGS.batch, ARGS.prompt
    ids = rng.integers(100, vocab, size=(b, p)).astype(np.int32)
    mask = np.zeros((b, p), np.int32)
    for row, n in enumerate(np.linspace(p // 2, p, b).astype(int)):
        mask[row, p - n :] = 1
    return np.where(mask == 1, ids, 0), mask


Timing = tuple[float, float]  # (wall seconds, process CPU seconds)


def time_jaxtune(model, params, ids, mask, new: int) -> tuple[Timing, np.ndarray]:
    start, cpu = time.perf_counter(), time.process_time()
    out = generate(model, params, ids, mask, max_new_tokens=new, bucket=False)
    tokens = np.asarray(out.tokens)  # blocks until done
    return (time.perf_counter() - start, time.process_time() - cpu), tokens


def time_hf(hf, ids, mask, new: int) -> tuple[Timing, np.ndarray]:
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = hf.generate(
            ids_t,
            attention_mask=mask_t,
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
            eos_token_id=None,
        )
    timing = (time.perf_counter() - start, time.process_time() - cpu)
    return timing, out[:, ids.shape[1] :].numpy()


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, params, hf, source = load_models(Path(tmp))
    ids, mask = prompts(model.config.vocab_size)
    b, n = ARGS.batch, ARGS.new

    # Warm up: compile both shapes once, and let torch allocate.
    start = time.perf_counter()
    for new in (1, n):
        time_jaxtune(model, params, ids, mask, new)
    compile_s = time.perf_counter() - start
    time_hf(hf, ids, mask, 2)

    load_before = os.getloadavg()[0]
    times: dict[str, list[Timing]] = {k: [] for k in ("jax1", "jaxN", "hf1", "hfN")}
    jax_tokens = hf_tokens = None
    for _ in range(ARGS.runs):  # alternate the two libraries
        times["jax1"].append(time_jaxtune(model, params, ids, mask, 1)[0])
        times["hf1"].append(time_hf(hf, ids, mask, 1)[0])
        timing, jax_tokens = time_jaxtune(model, params, ids, mask, n)
        times["jaxN"].append(timing)
        timing, hf_tokens = time_hf(hf, ids, mask, n)
        times["hfN"].append(timing)
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}

    prompt_tokens = int(mask.sum())

    def step_ms(med: dict[str, float], lib: str) -> float:
        return 1e3 * (med[f"{lib}N"] - med[f"{lib}1"]) / (n - 1)

    rows = {  # name: (jaxtune, transformers, higher is better)
        "prefill tok/s": (prompt_tokens / wall["jax1"], prompt_tokens / wall["hf1"], True),
        "decode tok/s": (1e3 * b / step_ms(wall, "jax"), 1e3 * b / step_ms(wall, "hf"), True),
        "end-to-end tok/s": (b * n / wall["jaxN"], b * n / wall["hfN"], True),
        "decode ms/step": (step_ms(wall, "jax"), step_ms(wall, "hf"), False),
        "decode CPU ms/step": (step_ms(cpu, "jax"), step_ms(cpu, "hf"), False),
        "prefill CPU ms": (1e3 * cpu["jax1"], 1e3 * cpu["hf1"], False),
    }
    same = int((jax_tokens == hf_tokens).all(axis=1).sum())
    print(f"model: {source}")
    print(
        f"batch {b}, prompts {mask.sum(axis=1).min()}..{ids.shape[1]} tokens (left-padded), "
        f"{n} new tokens, greedy, fp32, {ARGS.threads} threads, {ARGS.runs} alternating runs "
        f"(medians); jaxtune compile {compile_s:.1f}s (both shapes, not counted)"
    )
    print(
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
        "(wall-clock figures need a quiet machine; CPU time is steadier, except that busy "
        "torch threads spin)"
    )
    print(f"{'':20s}{'jaxtune':>10s}{'transformers':>14s}{'ratio':>8s}")
    for name, (ours, theirs, higher_better) in rows.items():
        ratio = ours / theirs if higher_better else theirs / ours
        print(f"{name:20s}{ours:10.1f}{theirs:14.1f}{ratio:7.2f}x")
    print(f"identical greedy rows: {same}/{b}")


if __name__ == "__main__":
    main()
