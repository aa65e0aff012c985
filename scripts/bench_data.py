"""Tokens/s of SFT data preparation: jaxtune.data vs LlamaFactory-style row-by-row preprocessing.

    .venv/bin/python scripts/bench_data.py [--repeat 25] [--rounds 3]

Both sides read the same JSONL (the shipped instruct, chat, demo_pirate and preference sets,
each repeated --repeat times so that a run takes a few seconds) with SmolLM2-135M-Instruct's
tokenizer and ChatML template, and produce input ids plus an assistant-only label mask:

- jaxtune: `make_lm_batches(split="eval")` drained to the end: datasets.load_dataset, format
  normalisation, one render per conversation prefix, one batched tokenizer call per chunk of
  256 rows, masks, and packing into [8, 1024] rows.
- peer (as LlamaFactory's SFT preprocessing does it): rows read one by one, and for every
  assistant turn `tokenizer.apply_chat_template` on the prefix with the generation prompt and on
  the prefix through the answer; labels are the difference. No packing.

Runs alternate (the machine is shared and noisy); the best of --rounds is printed per side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxtune.data import make_lm_batches, set_path

SETS = ("instruct", "chat", "demo_pirate", "preference")


def tokenizer():
    from transformers import AutoTokenizer

    from jaxtune.hub import smollm2_path

    gguf = Path(smollm2_path())
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def conversations(name: str) -> list[list[dict]]:
    rows = [json.loads(line) for line in Path(set_path(name)).read_text().splitlines()]
    out = []
    for row in rows:
        if "messages" in row:
            out.append(row["messages"])
        elif "instruction" in row:
            user = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
            msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            for q, a in row.get("history") or []:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            out.append(
                [
                    *msgs,
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": row["output"]},
                ]
            )
        else:
            out.append(row["prompt"] + row["chosen"])
    return out


def write_corpus(directory: Path, repeat: int) -> Path:
    path = directory / "corpus.jsonl"
    with path.open("w") as f:
        for _ in range(repeat):
            for name in SETS:
                for messages in conversations(name):
                    f.write(json.dumps({"messages": messages}) + "\n")
    return path


def run_jaxtune(path: Path, tok) -> int:
    config = {"eval": str(path), "packing": True}
    it = make_lm_batches(
        config, tok, batch_size=8, seq_len=1024, split="eval", host_index=0, host_count=1
    )
    return int(sum((b["segment_ids"] > 0).sum() for b in it))


def run_peer(path: Path, tok) -> int:
    tokens = 0
    with path.open() as f:
        for line in f:
            messages = json.loads(line)["messages"]
            ids: list[int] = []
            labels: list[int] = []
            for k, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                prompt = tok.apply_chat_template(messages[:k], add_generation_prompt=True)[
                    "input_ids"
                ]
                full = tok.apply_chat_template(messages[: k + 1])["input_ids"]
                labels += [-100] * (len(prompt) - len(ids)) + full[len(prompt) :]
                ids = full
            tokens += len(np.asarray(ids, np.int32))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tok = tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_corpus(Path(tmp), args.repeat)
        rows = sum(1 for _ in path.open())
        run_jaxtune(path, tok)  # warm up: datasets' cache of the JSON file, jinja compile
        best = {"jaxtune": 0.0, "peer": 0.0}
        counts = {}
        for _ in range(args.rounds):
            for name, fn in (("jaxtune", run_jaxtune), ("peer", run_peer)):
                start = time.perf_counter()
                counts[name] = fn(path, tok)
                best[name] = max(best[name], counts[name] / (time.perf_counter() - start))
    print(f"{rows} conversations, {counts['peer']} tokens (jaxtune counted {counts['jaxtune']})")
    print(f"{'':28s}{'tokens/s':>12s}")
    print(f"{'jaxtune.data (packed)':28s}{best['jaxtune']:12.0f}")
    print(f"{'LlamaFactory-style per row':28s}{best['peer']:12.0f}")
    print(f"ratio jaxtune / peer: {best['jaxtune'] / best['peer']:.2f}x")


if __name__ == "__main__":
    main()
