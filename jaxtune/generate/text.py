"""Strings in, strings out: tokenize (with the chat template), generate, decode.

texts = generate_text(model, params, tokenizer, ["What is 2+2?"], max_new_tokens=32)
texts = generate_text(model, params, tokenizer, [[{"role": "user", "content": "Hi"}]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.errors import UserError
from jaxtune.generate.decode import generate
from jaxtune.generate.prompts import left_pad

Messages = list[dict[str, str]]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer: Any, prompt: str | Messages, chat: bool = True) -> list[int]:
    """Token ids of one prompt.

    With `chat` and a tokenizer that has a chat template, a string becomes one user message and
    the template (with the assistant's generation prompt) is applied; otherwise the string is
    tokenized as is, with the tokenizer's special tokens (e.g. BOS).
    """
    is_messages = not isinstance(prompt, str)
    if is_messages and not (chat and has_chat_template(tokenizer)):
        raise UserError(
            "a prompt is a list of chat messages, but "
            + ("chat is off" if not chat else "the tokenizer has no chat template")
            + ": pass plain strings instead"
        )
    if chat and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}] if not is_messages else list(prompt)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def stop_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The end-of-sequence ids of the checkpoint's config and of its tokenizer."""
    ids = set(model.config.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def pad_id_for(model: Any, tokenizer: Any) -> int:
    """A padding id: the tokenizer's, else the config's, else the first EOS, else 0."""
    for pad in (getattr(tokenizer, "pad_token_id", None), model.config.pad_token_id):
        if pad is not None:
            return int(pad)
    eos = stop_ids(model, tokenizer)
    return eos[0] if eos else 0


def generate_text(
    model: Any,
    params: Any,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    *,
    chat: bool = True,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: Sequence[int] | None = None,
) -> list[str]:
    """Answers to a batch of prompts (strings or chat message lists), special tokens removed."""
    token_lists = [encode_prompt(tokenizer, p, chat) for p in prompts]
    pad_id = pad_id_for(model, tokenizer)
    ids, mask = left_pad(token_lists, pad_id)
    out = generate(
        model,
        params,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=stop_ids(model, tokenizer) if eos_ids is None else tuple(eos_ids),
        pad_id=pad_id,
        rng=jax.random.key(seed),
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    return [
        tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
        for row, n in zip(tokens, lengths, strict=True)
    ]
