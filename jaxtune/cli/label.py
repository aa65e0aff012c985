"""`jaxtune label`: RLAIF preference labelling, written as JSONL that the rm and dpo stages read.

    jaxtune label --input candidates.jsonl --output prefs.jsonl --judge llm --judge-model PATH
    jaxtune label --input prompts.jsonl --policy runs/sft/exported --num-samples 2 \
        --judge rm --judge-model runs/rm/exported --output prefs.jsonl
    jaxtune label --input candidates.jsonl --judge rule --rule my_module.my_score --output p.jsonl
    jaxtune label --config=configs/rlaif_label.py [--flag value ...]   # a recipe of flag values

A model path "embedded" is the embedded SmolLM2-135M-Instruct.

Judges: `llm` (pairwise "A or B?" template; `--llm-mode score` asks for a 1-10 rating;
`--both-orders` asks twice with the responses swapped and keeps consistent verdicts), `rm` (a
reward model's score) and `rule` (a Python reward function). Unparseable answers, ties and
inconsistent verdicts are counted and their rows skipped (see jaxtune.label).
"""

from __future__ import annotations

import argparse
import sys

from jaxtune.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label",
        help="label preference pairs with an AI judge (RLAIF)",
        description="Judge candidate responses (given, or sampled from --policy) with an LLM, "
        "a reward model or a rule, and write prompt/chosen/rejected JSONL.",
    )
    parser.add_argument("--config", default="", help="a recipe: get_config() of flag values")
    parser.add_argument("--input", default=None, help="JSONL: prompt + responses (or not)")
    parser.add_argument("--output", default=None, help="preference JSONL to write")
    parser.add_argument("--judge", choices=("llm", "rm", "rule"), default=None)
    parser.add_argument("--judge-model", default="", help="llm / rm judge: model directory")
    parser.add_argument("--rule", default="", help="rule judge: built-in or dotted function")
    parser.add_argument("--llm-mode", choices=("pairwise", "score"), default="pairwise")
    parser.add_argument("--both-orders", action="store_true", help="pairwise: ask twice")
    parser.add_argument("--policy", default="", help="sample candidates from this model")
    parser.add_argument("--num-samples", type=int, default=2, help="candidates per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.set_defaults(func=run)
    DEFAULTS.update({a.dest: a.default for a in parser._actions if a.dest != "help"})


DEFAULTS: dict = {}  # flag -> default, filled by add_parser (recipes fill the untouched ones)


EMBEDDED = "embedded"


def model_path(path: str) -> str:
    """A model path, "embedded" meaning the embedded SmolLM2-135M-Instruct."""
    if path == EMBEDDED:
        from jaxtune.hub.smollm2 import smollm2_path

        return str(smollm2_path())
    return path


def apply_recipe(args: argparse.Namespace, parser_defaults: dict) -> argparse.Namespace:
    """Values of `--config`'s get_config() for the flags left at their defaults."""
    if not args.config:
        return args
    import importlib.util
    from pathlib import Path

    path = Path(args.config)
    if not path.exists():
        raise UserError(f"--config {path}: no such file.")
    spec = importlib.util.spec_from_file_location(f"_label_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {path}: defines no get_config().")
    for key, value in dict(module.get_config()).items():
        if key not in parser_defaults or key in ("config", "func"):
            import difflib

            near = difflib.get_close_matches(key, list(parser_defaults), n=1)
            hint = f" Did you mean {near[0]}?" if near else ""
            raise UserError(f"--config {path}: unknown key {key!r}.{hint}")
        if getattr(args, key) == parser_defaults[key]:
            setattr(args, key, value)
    return args


def make_judge(args: argparse.Namespace):
    from jaxtune.label import judges

    if args.judge == "rule":
        if not args.rule:
            raise UserError("--judge rule needs --rule NAME (exact_match, format or a dotted path)")
        return judges.RuleJudge(args.rule)
    if not args.judge_model:
        raise UserError(f"--judge {args.judge} needs --judge-model PATH")
    path = model_path(args.judge_model)
    if args.judge == "rm":
        return judges.RewardModelJudge(path, batch_size=args.batch_size)
    if args.llm_mode == "score":
        return judges.LLMScoreJudge(path, batch_size=args.batch_size)
    return judges.LLMPairwiseJudge(path, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from jaxtune.label import pairs, rows, sampling

    args = apply_recipe(args, DEFAULTS)
    for flag in ("input", "output", "judge"):
        if not getattr(args, flag):
            raise UserError(f"jaxtune label needs --{flag} (on the command line or in --config).")
    judge = make_judge(args)
    data = rows.read_rows(args.input, need_responses=not args.policy)
    if args.policy:
        if args.num_samples < 1:
            raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
        data = sampling.add_samples(
            data,
            model_path(args.policy),
            k=args.num_samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    labelled, counts = pairs.label(data, judge, both_orders=args.both_orders)
    path = rows.write_pairs(args.output, labelled)
    print(f"{counts.summary()} -> {path}", file=sys.stderr)
    if not labelled:
        raise UserError(f"no row could be labelled ({counts.summary()}); see the counts above.")
    return 0
