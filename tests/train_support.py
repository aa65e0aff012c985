"""Helpers of the train and CLI tests: a tiny checkpoint with a real (small) tokenizer, runs of
the `jaxtune` command as subprocesses, and metrics.jsonl reading."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jaxtune.data.sets import HERE as SETS_DIR

ROOT = Path(__file__).resolve().parents[1]
# Trained once and kept, so tiny-model tests see the same token ids in every run.
FROZEN_TOKENIZERS = ROOT / "tests" / "data" / "small_tokenizer"
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _texts() -> list[str]:
    def strings(v):
        if isinstance(v, str):
            return [v]
        if isinstance(v, dict):
            return [s for x in v.values() for s in strings(x)]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return []

    out = []
    for path in sorted(SETS_DIR.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            out.extend(strings(json.loads(line)))
    return out


@functools.cache
def small_tokenizer(vocab_size: int = 128):
    """A byte-fallback-free Metaspace BPE trained on the shipped sets, with ChatML specials and
    template: real tokenization of the shipped data within the tiny models' 128 ids. The
    128-token one is read from tests/data/small_tokenizer (trained as below, then frozen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    frozen = FROZEN_TOKENIZERS / f"bpe_{vocab_size}.json"
    if frozen.exists():  # the BPE trainer breaks ties differently in each process
        core = Tokenizer.from_file(str(frozen))
    else:
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, limit_alphabet=60
        )
        core.train_from_iterator(_texts(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHATML
    assert len(tok) <= vocab_size
    return tok


def checkpoint_with_tokenizer(src: str, dst: Path, vocab_size: int = 128) -> str:
    """A copy of the tiny checkpoint `src` with the small tokenizer saved beside it."""
    if not (dst / "config.json").exists():
        shutil.copytree(src, dst, dirs_exist_ok=True)
        small_tokenizer(vocab_size).save_pretrained(dst)
    return str(dst)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("JAX_PLATFORMS", "cpu")
    out.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    out.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def jaxtune(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m jaxtune.cli.main ARGS` (the console script's entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "jaxtune.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=ROOT,
        **kwargs,
    )


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_llama(directory: Path, init_std: float = 0.2, seed: int = 0) -> str:
    """A tiny random Llama (the sizes of tests/tiny_models.py) saved with the small tokenizer.

    init_std 0.2 (transformers uses 0.02) gives logits of order 1, as a trained model has; with
    0.02 a frozen random head and final norm cap the logits near 0, so methods that train only
    a few weights (LoRA, freeze) could not move the loss far whatever they learn."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny_models import SMALL

    directory = Path(directory)
    if (directory / "config.json").exists():
        return str(directory)
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", **dict(SMALL, initializer_range=init_std))
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    small_tokenizer(SMALL["vocab_size"]).save_pretrained(directory)
    return str(directory)
