"""Check a dataset before training: what a run's config turns it into, with counts and samples.

    python scripts/prepare_data.py --config=configs/sft_lora.py
    python scripts/prepare_data.py --config=configs/sft_lora.py --config.data.train=my.jsonl \\
        --show 2 --out prepared/      # + prepared/batches.npz and prepared/stats.json

The config is read exactly as `jaxtune train` reads it (recipe file and `--config.KEY=VALUE`
overrides); the batches come from the same data worker (`jaxtune.data.make_batches`) with the
run's stage, `train.batch_size` and `train.seq_len`, and the model's tokenizer. The split is read
once, in file order (`--split train` ignores shuffling and mixing weights). Printed: rows kept
and skipped (a bad row names its file and row), examples, tokens, learned tokens, packing fill,
example lengths; `--show N` decodes the first N examples with the learned tokens in [[...]].
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

SIDES = ("", "chosen_", "rejected_")  # LM-style sequences of a batch (kl_ is derived: skipped)


def parse_args(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    from jaxtune.cli.config_flags import parse_config_args

    config, rest = parse_config_args(argv)
    parser = argparse.ArgumentParser(
        prog="python scripts/prepare_data.py",
        description="Tokenize, mask and pack a dataset as `jaxtune train --config=...` would, and "
        "report what came out. Config flags: --config=FILE --config.KEY=VALUE.",
    )
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--show", type=int, default=1, help="examples to decode (default 1)")
    parser.add_argument("--max-batches", type=int, default=0, help="stop after N (0 = all)")
    parser.add_argument("--out", default="", help="directory for batches.npz and stats.json")
    return config, parser.parse_args(rest)


def one_pass(config: Any, tokenizer: Any, split: str) -> Iterator[dict[str, np.ndarray]]:
    """The run's batches of `split`, read once in file order (an eval-style pass)."""
    from jaxtune.data import make_batches
    from jaxtune.errors import UserError

    data = config.data.to_dict()
    if not data.get(split):
        raise UserError(
            f"config.data.{split} is empty: give a dataset (--config.data.{split}=...)."
        )
    data["eval"] = data[split]  # the data worker reads its eval split once, unshuffled
    data["mix_weights"] = None
    return make_batches(
        data,
        tokenizer,
        stage=str(config.stage),
        split="eval",
        batch_size=int(config.train.batch_size),
        seq_len=int(config.train.seq_len),
    )


def segments(batch: dict[str, np.ndarray], side: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, learned) per example of one side: the example's tokens and, per token, whether
    a loss is taken on it (the target of the previous position is learned)."""
    seg_ids, ids = batch[side + "segment_ids"], batch[side + "input_ids"]
    mask = batch[side + "loss_mask"]
    for r in range(seg_ids.shape[0]):
        for s in np.unique(seg_ids[r][seg_ids[r] > 0]):
            where = np.flatnonzero(seg_ids[r] == s)
            learned = np.zeros(len(where), bool)
            learned[1:] = mask[r, where[:-1]] > 0
            yield ids[r, where], learned


def batch_stats(batches: list[dict[str, np.ndarray]], unk_id: int | None) -> dict[str, Any]:
    """Counts over every batch: per sequence side (LM, chosen, rejected) or prompt batches.
    unknown_tokens counts the tokenizer's unk id (text it cannot represent)."""
    if not batches:
        return {"batches": 0}
    first = batches[0]
    stats: dict[str, Any] = {"batches": len(batches), "batch_shape": list(first_shape(first))}
    if "prompt_ids" in first:
        lengths = np.concatenate([b["prompt_mask"].sum(1) for b in batches])
        lengths = lengths[lengths > 0]
        unknown = sum(count(b["prompt_ids"][b["prompt_mask"] > 0], unk_id) for b in batches)
        stats["prompts"] = {
            "examples": len(lengths),
            "unknown_tokens": unknown,
            "length": summary(lengths),
        }
        return stats
    for side in SIDES:
        if side + "segment_ids" not in first:
            continue
        lengths = [len(t) for b in batches for t, _ in segments(b, side)]
        tokens = sum(int(np.count_nonzero(b[side + "segment_ids"])) for b in batches)
        slots = sum(b[side + "segment_ids"].size for b in batches)
        learned = sum(float(b[side + "loss_mask"].sum()) for b in batches)
        unknown = sum(
            count(b[side + "input_ids"][b[side + "segment_ids"] > 0], unk_id) for b in batches
        )
        stats[side.rstrip("_") or "sequences"] = {
            "examples": len(lengths),
            "tokens": tokens,
            "unknown_tokens": unknown,
            "learned_tokens": int(learned),
            "learned_fraction": round(learned / max(tokens, 1), 4),
            "fill": round(tokens / max(slots, 1), 4),
            "length": summary(np.asarray(lengths)),
        }
    return stats


def count(ids: np.ndarray, token: int | None) -> int:
    return 0 if token is None else int(np.count_nonzero(ids == token))


def first_shape(batch: dict[str, np.ndarray]) -> tuple[int, ...]:
    return next(v.shape for v in batch.values() if isinstance(v, np.ndarray) and v.ndim == 2)


def summary(lengths: np.ndarray) -> dict[str, float]:
    if lengths.size == 0:
        return {}
    q = np.percentile(lengths, [50, 90, 100])
    return {
        "min": int(lengths.min()),
        "median": round(float(q[0]), 1),
        "p90": round(float(q[1]), 1),
        "max": int(q[2]),
    }


def render(tokenizer: Any, tokens: np.ndarray, learned: np.ndarray) -> str:
    """The example's text with its learned spans in [[...]]."""
    out, start = [], 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or learned[i] != learned[start]:
            text = tokenizer.decode(tokens[start:i].tolist())
            out.append(f"[[{text}]]" if learned[start] else text)
            start = i
    return "".join(out)


def show(tokenizer: Any, batch: dict[str, np.ndarray], n: int) -> None:
    if "prompt_ids" in batch:
        for r in range(min(n, batch["prompt_ids"].shape[0])):
            ids = batch["prompt_ids"][r][batch["prompt_mask"][r] > 0]
            answer = f"   (answer: {batch['answer'][r]})" if "answer" in batch else ""
            print(f"--- prompt {r + 1}{answer}\n{tokenizer.decode(ids.tolist())}")
        return
    for side in SIDES:
        if side + "segment_ids" not in batch:
            continue
        for i, (tokens, learned) in enumerate(segments(batch, side)):
            if i >= n:
                break
            label = side.rstrip("_") or "example"
            print(f"--- {label} {i + 1} ({len(tokens)} tokens, {int(learned.sum())} learned)")
            print(render(tokenizer, tokens, learned))


def write(out: Path, batches: list[dict[str, np.ndarray]], stats: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        k: np.stack([b[k] for b in batches])
        for k in batches[0]
        if isinstance(batches[0][k], np.ndarray) and batches[0][k].dtype != object
    }
    np.savez_compressed(out / "batches.npz", **arrays)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def main(argv: list[str] | None = None) -> int:
    from jaxtune.data import DataWarning
    from jaxtune.errors import UserError
    from jaxtune.train.build import load_tokenizer, model_path

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, args = parse_args(argv)
        tokenizer = load_tokenizer(config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = []
            for batch in one_pass(config, tokenizer, args.split):
                batches.append(batch)
                if args.max_batches and len(batches) >= args.max_batches:
                    break
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    notes = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    source = config.data[args.split]
    stats = {
        "stage": str(config.stage),
        "split": args.split,
        "data": source,
        "tokenizer": config.model.tokenizer or model_path(config),
        "seq_len": int(config.train.seq_len),
        "packing": bool(config.data.packing),
        "warnings": notes,
        **batch_stats(batches, tokenizer.unk_token_id),
    }
    print(json.dumps(stats, indent=2))
    if batches and args.show > 0:
        show(tokenizer, batches[0], args.show)
    if args.out and batches:
        write(Path(args.out), batches, stats)
        print(f"wrote {args.out}/batches.npz and {args.out}/stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
