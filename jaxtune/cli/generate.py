"""`jaxtune generate`: answer prompts with a checkpoint (chat template applied when it has one).

    jaxtune generate --model PATH --prompt "What is 2+2?" [--prompt ...] \
        [--max-new-tokens 128 --temperature 0 --top-k 0 --top-p 1.0 --seed 0 --no-chat]
"""

from __future__ import annotations

import argparse
import sys

from jaxtune.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `generate` subcommand (its handler is `run`)."""
    parser = subparsers.add_parser(
        "generate",
        help="answer prompts with a model",
        description="Generate answers to prompts with a checkpoint directory, a .gguf file or "
        "a hub id. Greedy unless --temperature > 0.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory, .gguf or hub id")
    parser.add_argument(
        "--prompt", action="append", required=True, help="a prompt (repeat for a batch)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--no-chat",
        dest="chat",
        action="store_false",
        help="tokenize prompts as raw text, without the chat template",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model and tokenizer, print one answer per prompt. Returns the exit status."""
    try:
        import jaxtune.models as jm
        from jaxtune.generate import generate_text

        if args.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        model, params = jm.load(args.model)
        tokenizer = jm.load_tokenizer(args.model)
        answers = generate_text(
            model,
            params,
            tokenizer,
            args.prompt,
            chat=args.chat,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    except UserError as e:
        print(f"jaxtune generate: error: {e}", file=sys.stderr)
        return 2
    for i, (prompt, answer) in enumerate(zip(args.prompt, answers, strict=True)):
        if len(args.prompt) > 1:
            print(f"### {prompt}" if i == 0 else f"\n### {prompt}")
        print(answer)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jaxtune.cli.generate ...` (the same as `jaxtune generate ...`)."""
    parser = argparse.ArgumentParser(prog="jaxtune generate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
