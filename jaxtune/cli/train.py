"""`jaxtune train --config=configs/x.py [--config.key=value ...]`: run (or resume) training.

The run writes to config.output_dir: checkpoints/, metrics.jsonl, tensorboard/, config.json.
Running the same command again continues from the newest checkpoint.
Multi-host: every host runs the same command; the process joins the others first
(`jaxtune.sharding.distributed.initialize` with config.distributed; nothing with one process).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train with a config (resumes from output_dir)",
        description="Train with an ml_collections config file: --config=configs/x.py, and "
        "override any key with --config.section.key=value (e.g. --config.optim.lr=1e-4). "
        "Running the same command again resumes from the newest checkpoint in output_dir.",
    )
    parser.set_defaults(func=run, accepts_config=True)


def run(args: argparse.Namespace) -> int:
    from jaxtune.cli.config_flags import parse_config_args
    from jaxtune.errors import UserError
    from jaxtune.sharding import distributed

    config, rest = parse_config_args(args.rest)
    if rest:
        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    distributed.initialize(config.distributed)  # before anything touches the devices
    from jaxtune.train import train

    result = train(config)
    final = result.losses.get(config.train.steps)
    summary = f"done: {config.train.steps} steps"
    if final is not None:
        summary += f", final loss {final:.4f}"
    evals = result.evals.get(config.train.steps)
    if evals and "eval_loss" in evals:
        summary += f", eval loss {evals['eval_loss']:.4f}"
    if distributed.is_main():
        print(f"{summary}; outputs in {config.output_dir}")
    return 0
