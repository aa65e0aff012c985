"""`jaxtune eval`: the stage's loss and metrics on data.eval, for a trained run or a base model.

    jaxtune eval --checkpoint runs/sft_lora [--config.data.eval=path.jsonl]
    jaxtune eval --config=configs/sft_lora.py             # the base model, before training
    jaxtune eval --config=configs/rm_lora.py --config.model.path=exported/rm   # a reward model

Prints one JSON object (eval_loss, eval_loss_tokens, and the stage's metrics: for `rm`,
eval_accuracy and eval_margin over the preference pairs) on stdout, and writes it to
eval_results.json in the run's directory (--checkpoint) or in config.output_dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (or a base model) on data.eval",
        description="Evaluate the stage's loss on data.eval. With --checkpoint, the run's own "
        "config is used (override keys with --config.key=value); without it, --config and the "
        "untrained model.",
    )
    parser.add_argument("--checkpoint", default="", help="a run's output_dir or a step's dir")
    parser.set_defaults(func=run, accepts_config=True)


def run(args: argparse.Namespace) -> int:
    from jaxtune.cli.config_flags import apply_override, parse_config_args
    from jaxtune.errors import UserError
    from jaxtune.train.build import build_run, make_batches
    from jaxtune.train.evaluate import eval_step_for, evaluate

    if args.checkpoint:
        from jaxtune.train.restore import load_trained, locate

        overrides = _overrides(args.rest)
        run_, params, step = load_trained(
            args.checkpoint, lambda c: [apply_override(c, k, v) for k, v in overrides]
        )
        trainable, frozen = _split(run_, params)
        out_dir = locate(args.checkpoint)[0].parent
    else:
        config, rest = parse_config_args(args.rest)
        if rest:
            raise UserError(f"unrecognized arguments: {' '.join(rest)}")
        run_ = build_run(config, quiet=True)
        trainable, frozen, step = run_.trainable, run_.frozen, 0
        out_dir = Path(config.output_dir)
    if not run_.config.data.get("eval"):
        raise UserError("data.eval is empty: give --config.data.eval=PATH (a dataset file).")
    batches = make_batches(run_.config, run_.tokenizer, run_.stage, "eval")
    eval_hook = getattr(run_.stage, "eval_batches", None)
    if eval_hook is not None:  # e.g. reference log-probs for the eval pairs
        batches = eval_hook(run_, iter(batches), lambda: run_.combine(trainable, frozen))
    metrics = evaluate(run_, eval_step_for(run_), trainable, frozen, batches)
    result = {"step": step, "stage": run_.stage.name, "data": str(run_.config.data.eval)}
    result.update(metrics)
    print(json.dumps(result))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_results.json").write_text(json.dumps(result, indent=2) + "\n")
    if "eval_accuracy" in metrics and "eval_margin" in metrics:
        print(
            f"preference accuracy {metrics['eval_accuracy']:.4f}, mean margin "
            f"{metrics['eval_margin']:.4f} (written to {out_dir / 'eval_results.json'})",
            file=sys.stderr,
        )
    return 0


def _overrides(rest: list[str]) -> list[tuple[str, str]]:
    from jaxtune.errors import UserError

    out = []
    for arg in rest:
        if not arg.startswith("--config.") or "=" not in arg:
            raise UserError(
                f"{arg}: with --checkpoint, only --config.key=value overrides are accepted."
            )
        key, value = arg[len("--config.") :].split("=", 1)
        out.append((key, value))
    return out


def _split(run_, params):
    if run_.config.peft.method == "none":
        return params, {}
    from jaxtune import peft

    return peft.split_trainable(params)
