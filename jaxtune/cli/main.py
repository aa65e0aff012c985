"""`jaxtune <command>`: the console entry point.

    jaxtune train    --config=configs/sft_lora.py --config.optim.lr=1e-4
    jaxtune eval     --config=configs/sft_lora.py [--checkpoint runs/sft_lora]
    jaxtune export   --checkpoint runs/sft_lora --out exported/ [--adapter]
    jaxtune generate --model exported/ --prompt "Hello"

Each subcommand is a module of jaxtune.cli with `add_parser(subparsers)` (which sets
`func=run`); a module that is not there is simply not offered. A `jaxtune.errors.UserError`
prints its message (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS = ("train", "eval", "export", "generate", "label")
USER_ERROR_STATUS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxtune",
        description="Fine-tune and align LLMs in JAX. `jaxtune <command> --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"jaxtune.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"jaxtune.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def enable_compilation_cache() -> None:
    """Reuse compiled steps across runs (under $JAXTUNE_CACHE/jax unless JAX sets its own)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    from jaxtune.hub.smollm2 import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    from jaxtune.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.rest = rest
    if rest and not getattr(args, "accepts_config", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        enable_compilation_cache()
        status = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
