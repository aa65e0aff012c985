"""`jaxtune label`: RLAIF preference labelling, written as JSONL that the rm and dpo stages read.

    jaxtune label --input candidates.jsonl --output prefs.jsonl --judge llm --judge-model PATH
    jaxtune label --input prompts.jsonl --policy runs/sft/exported --num-samples 2 \
        --judge rm --judge-model runs/rm/exported --output prefs.jsonl
    jaxtune label --input candidates.jsonl --judge rule --rule my_module.my_score --output p.jsonl

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
    parser.add_argument("--input", required=True, help="JSONL: prompt + responses (or not)")
    parser.add_argument("--output", required=True, help="preference JSONL to write")
    parser.add_argument("--judge", choices=("llm", "rm", "rule"), required=True)
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


def make_judge(args: argparse.Namespace):
    from jaxtune.label import judges

    if args.judge == "rule":
        if not args.rule:
            raise UserError("--judge rule needs --rule NAME (exact_match, format or a dotted path)")
        return judges.RuleJudge(args.rule)
    if not args.judge_model:
        raise UserError(f"--judge {args.judge} needs --judge-model PATH")
    if args.judge == "rm":
        return judges.RewardModelJudge(args.judge_model, batch_size=args.batch_size)
    if args.llm_mode == "score":
        return judges.LLMScoreJudge(args.judge_model, batch_size=args.batch_size)
    return judges.LLMPairwiseJudge(args.judge_model, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from jaxtune.label import pairs, rows, sampling

    judge = make_judge(args)
    data = rows.read_rows(args.input, need_responses=not args.policy)
    if args.policy:
        if args.num_samples < 1:
            raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
        data = sampling.add_samples(
            data,
            args.policy,
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
