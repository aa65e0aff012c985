"""`jaxtune export --checkpoint DIR --out DIR [--adapter] [--dtype bfloat16]`.

Merged (default): adapters folded into the base, quantized weights dequantized, written as a
Hugging Face checkpoint (config.json, model.safetensors, tokenizer) that transformers loads.
--adapter: the LoRA/DoRA weights alone as a PEFT adapter directory (adapter_config.json,
adapter_model.safetensors) for `peft.PeftModel.from_pretrained(base, DIR)`.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a trained run as HF safetensors (merged) or a PEFT adapter",
        description="Export the newest (or a given) checkpoint of a run.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a run's output_dir, or checkpoints/<step>"
    )
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument(
        "--adapter", action="store_true", help="write a PEFT adapter instead of merged weights"
    )
    parser.add_argument(
        "--dtype", default="", help="stored dtype of merged weights (float32|bfloat16|float16)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jaxtune.train.export import export_adapter, export_merged, initial_params
    from jaxtune.train.restore import load_trained

    run_, params, step = load_trained(args.checkpoint)
    if args.adapter:
        out = export_adapter(run_, params, args.out, initial=initial_params(run_))
        print(f"wrote the PEFT adapter of step {step} to {out}")
    else:
        out = export_merged(run_, params, args.out, args.dtype)
        print(f"wrote merged weights of step {step} to {out}")
    return 0
