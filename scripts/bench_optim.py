"""Optimizer-state bytes and peak host memory of one train step, per fine-tuning method, on
SmolLM2-135M shapes: the shape of the LlamaFactory paper's efficiency table, with the PyTorch
stack beside it (transformers + torch AdamW / peft / galore-torch / badam).

    .venv/bin/python scripts/bench_optim.py                    # 30 layers, B=1, T=256, fp32
    .venv/bin/python scripts/bench_optim.py --layers 8 --no-torch
    .venv/bin/python scripts/bench_optim.py --precision pure_bf16

Every (method, implementation) runs in its own subprocess, jax and torch alternating, so that
peak resident memory (VmHWM of /proc/self/status) belongs to that run alone: random weights with
SmolLM2's shapes, the method's transform, the optimizer, then two jitted (jax) or eager (torch)
steps of forward + backward + update on one batch. Optimizer-state bytes are exact: the sum over
the arrays of the state tree (jax) or of the tensors in `optimizer.state` (torch, projectors of
galore-torch included). Methods: full AdamW; freeze (last 2 layers, LlamaFactory's default);
LoRA r=16 on all linear layers; GaLore r=16 on all linear layers of the decoder; BAdam one layer
per block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

METHODS = ("full", "freeze", "lora", "galore", "badam")
RANK, FREEZE_LAYERS = 16, 2


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# ----------------------------------------------------------------------------- jaxtune
def smollm2_config(layers: int):
    from jaxtune.models import ModelConfig, RopeConfig

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


def jax_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxtune import optim, peft
    from jaxtune.losses.lm import lm_loss
    from jaxtune.models import CausalLM

    param_dtype, compute = optim.model_dtypes(args.precision)
    model = CausalLM(smollm2_config(args.layers), compute_dtype=compute)
    params = model.init(jax.random.PRNGKey(0), param_dtype or jnp.float32)
    config = optim.default_config()
    config.update(lr=1e-5, schedule="constant", mixed_precision=args.precision)
    if method == "lora":
        params = peft.lora(params, "all-linear", rank=RANK, alpha=2 * RANK, rng=jax.random.key(1))
    elif method == "freeze":
        params = peft.freeze(params, trainable_layers=FREEZE_LAYERS)
    elif method in ("galore", "badam"):
        config.name = method
        config.galore.rank = RANK
    if method == "full" or method in ("galore", "badam"):
        trainable, frozen, combine = params, None, lambda t, f: t
    else:
        trainable, frozen = peft.split_trainable(params)
        combine = peft.combine
    tx = optim.build(config, trainable)
    state = jax.jit(tx.init)(trainable)

    def loss_fn(t, f, ids):
        logits = model.apply(combine(t, f), ids[:, :-1])
        total, count = lm_loss(logits, ids[:, 1:], jnp.ones(ids[:, 1:].shape, jnp.float32))
        return total / count

    def step(t, s, f, ids):
        loss, grads = jax.value_and_grad(loss_fn)(t, f, ids)
        updates, s = tx.update(grads, s, t)
        return optax.apply_updates(t, updates), s, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq + 1)))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        trainable, state, loss = step(trainable, state, frozen, ids)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    n_train, n_all = peft.count_parameters(params)
    if method in ("galore", "badam", "full"):
        n_train = n_all
    return dict(
        state_bytes=optim.tree_bytes(state),
        trainable=n_train,
        params=n_all,
        peak=vm_hwm_bytes(),
        step_s=times[-1],
        loss=float(loss),
    )


# ----------------------------------------------------------------------------- torch
def torch_state_bytes(optimizer: Any) -> int:
    import torch

    inner = getattr(optimizer, "base_optimizer", optimizer)  # BAdam wraps torch AdamW
    total = 0
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
            elif hasattr(value, "ortho_matrix") and value.ortho_matrix is not None:
                total += value.ortho_matrix.numel() * value.ortho_matrix.element_size()
    return total


def torch_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "pure_bf16" else torch.float32
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    lr = 1e-5
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear")
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    elif method == "freeze":
        keep = {f"model.layers.{i}." for i in range(args.layers - FREEZE_LAYERS, args.layers)}
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(k) for k in keep))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    elif method == "galore":
        from galore_torch import GaLoreAdamW

        low = [
            p for n, p in model.named_parameters() if "layers." in n and p.ndim == 2
        ]  # every linear weight of the decoder layers (LlamaFactory's galore_target=all)
        ids = {id(p) for p in low}
        rest = [p for p in model.parameters() if id(p) not in ids]
        optimizer = GaLoreAdamW(
            [
                {"params": rest},
                {
                    "params": low,
                    "rank": RANK,
                    "update_proj_gap": 200,
                    "scale": 0.25,
                    "proj_type": "std",
                },
            ],
            lr=lr,
            no_deprecation_warning=True,
        )
    elif method == "badam":
        from badam import BlockOptimizer

        optimizer = BlockOptimizer(
            torch.optim.AdamW(model.parameters(), lr=lr),
            list(model.named_parameters()),
            switch_block_every=50,
            switch_mode="ascending",
            verbose=0,
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor(np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq + 1)))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = n_all if method in ("badam", "galore", "full") else None
    if n_train is None:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(
        state_bytes=torch_state_bytes(optimizer),
        trainable=n_train,
        params=n_all,
        peak=vm_hwm_bytes(),
        step_s=times[-1],
        loss=float(loss),
    )


# ----------------------------------------------------------------------------- driver
def run_child(impl: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, "--impl", impl]
    cmd += ["--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq)]
    cmd += ["--precision", args.precision]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--precision", default="none", choices=("none", "bf16", "pure_bf16"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--child", default="")
    ap.add_argument("--impl", default="jax")
    args = ap.parse_args()
    if args.child:
        fn = jax_child if args.impl == "jax" else torch_child
        print(json.dumps(fn(args.child, args)))
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    impls = ["jax"] if args.no_torch else ["jax", "torch"]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for i, method in enumerate(methods):
        order = impls if i % 2 == 0 else impls[::-1]  # alternate which runs first
        for impl in order:
            results[impl, method] = run_child(impl, method, args)
            print(f"  done {impl:5s} {method}", file=sys.stderr, flush=True)

    print(
        f"SmolLM2-135M shapes, {args.layers} layers, B={args.batch}, T={args.seq}, "
        f"precision={args.precision}; MiB; ratios vs full AdamW of the same implementation"
    )
    head = f"{'method':8s} {'impl':6s} {'trainable':>12s} {'opt state':>9s} {'x full':>7s}"
    print(head + f" {'peak RSS':>9s} {'x full':>7s} {'step s':>7s}")
    for method in methods:
        for impl in impls:
            r, full = results[impl, method], results.get((impl, "full"))
            s_ratio = f"{r['state_bytes'] / full['state_bytes']:7.3f}" if full else "      -"
            p_ratio = f"{r['peak'] / full['peak']:7.3f}" if full else "      -"
            print(
                f"{method:8s} {impl:6s} {r['trainable']:12,d} {mib(r['state_bytes'])} {s_ratio}"
                f" {mib(r['peak'])} {p_ratio} {r['step_s']:7.2f}"
            )
    if not args.no_torch:
        print("jaxtune / torch peak RSS per method:")
        for method in methods:
            ratio = results["jax", method]["peak"] / results["torch", method]["peak"]
            print(f"  {method:8s} {ratio:.3f}")


if __name__ == "__main__":
    main()
