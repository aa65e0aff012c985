"""Records -> token ids and assistant spans, equal to transformers' `apply_chat_template`.

A conversation is rendered once in full and tokenized once (as `apply_chat_template` does:
render, then `tokenizer(text, add_special_tokens=False)`). Assistant spans are found without
`{% generation %}` tags, prefix by prefix: for each assistant message k,

    render(messages[:k], add_generation_prompt=True)  ->  span start
    render(messages[:k + 1])                          ->  span end

Both strings must be prefixes of the full text and their tokens prefixes of its tokens; a
template that breaks the string property (one that rewrites earlier turns) is refused with
`TemplateBreaksPrefix`, and a row whose tokens merge across a boundary is a bad row (trailing
whitespace that tokenizes differently once text follows is matched token by token, see
`_boundary`). All strings
of a chunk of rows are tokenized in one batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxtune.data.errors import BadRow, DataError, TemplateBreaksPrefix
from jaxtune.data.formats import Chat, Pair, Prompt, Text, Unpaired, check_chat
from jaxtune.data.templates import BUILTIN, ChatTemplate


@dataclass(frozen=True)
class Tokens:
    """One document: token ids and, per assistant turn, its token span [start, end)."""

    ids: np.ndarray  # int32 [L]
    spans: tuple[tuple[int, int], ...]
    prompt_len: int = 0  # for pairs / unpaired / prompts: tokens before the completion


class _Batch:
    """Collects strings to tokenize in one call, returning handles to their ids."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.texts)
            self.texts.append(text)
        return self.index[text]

    def run(self, tokenizer: Any) -> list[list[int]]:
        if not self.texts:
            return []
        return tokenizer(self.texts, add_special_tokens=False)["input_ids"]


def _is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and list(long[: len(short)]) == list(short)


@dataclass
class _Plan:
    """The strings of one record and how to read its tokens back."""

    full: list[int]  # handles of each full text (chosen, rejected for a pair)
    bounds: list[list[tuple[int, int]]]  # per full text: (start handle, end handle) per span
    prompt: int | None = None  # handle of the prompt with the generation header


def _plan_chat(
    messages, tools, template: ChatTemplate, batch: _Batch, label: str
) -> tuple[int, list]:
    full_text = template.render(messages, tools=tools)
    bounds = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = template.render(messages[:k], add_generation_prompt=True, tools=tools)
        end = (
            full_text if k == len(messages) - 1 else template.render(messages[: k + 1], tools=tools)
        )
        if not (full_text.startswith(end) and end.startswith(start)):
            raise TemplateBreaksPrefix(
                f"chat template {template.name!r} does not render {label} turn by turn: the text "
                f"up to assistant message {k} is not a prefix of the whole conversation, so the "
                "answer spans cannot be found. Use a template that renders earlier turns "
                "unchanged (data.template = one of the built-ins), or one with mask_history."
            )
        bounds.append((batch.add(start), batch.add(end)))
    return batch.add(full_text), bounds


def _plan(record, template: ChatTemplate, batch: _Batch, label: str) -> _Plan:
    if isinstance(record, Chat):
        check_chat(record.messages)
        full, bounds = _plan_chat(record.messages, record.tools, template, batch, label)
        return _Plan([full], [bounds])
    if isinstance(record, Pair | Unpaired):
        completions = (
            [record.chosen, record.rejected] if isinstance(record, Pair) else [record.completion]
        )
        prompt_text = template.render(record.prompt, add_generation_prompt=True, tools=record.tools)
        plan = _Plan([], [], batch.add(prompt_text))
        for completion in completions:
            messages = record.prompt + completion
            check_chat(messages)
            full, bounds = _plan_chat(messages, record.tools, template, batch, label)
            if not template.render(messages, tools=record.tools).startswith(prompt_text):
                raise TemplateBreaksPrefix(
                    f"chat template {template.name!r}: the prompt of {label} is not a prefix "
                    "of prompt + answer"
                )
            plan.full.append(full)
            plan.bounds.append(bounds)
        return plan
    if isinstance(record, Prompt):
        check_chat(record.prompt, needs_answer=False)
        text = template.render(record.prompt, add_generation_prompt=True, tools=record.tools)
        return _Plan([], [], batch.add(text))
    raise BadRow(f"cannot tokenize a {type(record).__name__}")


def _boundary(
    handle: int, tokens: list[int], batch: _Batch, ids: list[list[int]], tokenizer: Any, side: str
) -> int:
    """The token index where a prefix string ends inside the full conversation's tokens.

    Usually the prefix's tokens are a prefix of the full tokens. When the prefix ends in
    whitespace, a tokenizer may split that whitespace differently once text follows (GPT-2's
    pattern tokenizes "\n\n" as one token but "\n\nHello" as "\n", "\n", "Hello"). Then the
    prefix without its trailing whitespace must be a token prefix, and the whitespace is matched
    token by token: a span starts exactly after it, or ends where the tokens still lie inside
    it. A token that holds both the whitespace and the text after it is a bad row.
    """
    if _is_prefix(ids[handle], tokens):
        return len(ids[handle])
    text = batch.texts[handle]
    stripped = text.rstrip()
    whitespace = text[len(stripped) :]
    if whitespace:
        head = tokenizer(stripped, add_special_tokens=False)["input_ids"]
        if _is_prefix(head, tokens):
            p, q = len(head), len(head)
            while q < len(tokens) and whitespace.startswith(
                decoded := tokenizer.decode(tokens[p : q + 1])
            ):
                q += 1
                if decoded == whitespace:
                    return q
            if side == "end":
                return q
    where = (
        "first tokens of an answer merge with the header before"
        if side == "start"
        else "last tokens of an answer merge with the text after"
    )
    raise BadRow(
        f"the {where} it (e.g. an answer starting with whitespace the header ends with), so "
        "its span would be wrong",
        "token boundary",
    )


def _read(plan: _Plan, ids: list[list[int]], batch: _Batch, tokenizer: Any) -> list[Tokens]:
    prompt_len = len(ids[plan.prompt]) if plan.prompt is not None else 0
    if not plan.full:
        return [Tokens(np.asarray(ids[plan.prompt], np.int32), (), prompt_len)]
    out = []
    for full, bounds in zip(plan.full, plan.bounds, strict=True):
        tokens = ids[full]
        spans = []
        for start, end in bounds:
            spans.append(
                (
                    _boundary(start, tokens, batch, ids, tokenizer, "start"),
                    _boundary(end, tokens, batch, ids, tokenizer, "end"),
                )
            )
        if plan.prompt is not None:
            prompt_len = _boundary(plan.prompt, tokens, batch, ids, tokenizer, "start")
        out.append(Tokens(np.asarray(tokens, np.int32), tuple(spans), prompt_len))
    return out


def tokenize_records(
    records: Sequence[Any], tokenizer: Any, template: ChatTemplate | None, labels: Sequence[str]
) -> list[list[Tokens] | BadRow]:
    """Tokenize a chunk of records in one batched tokenizer call.

    Chat -> [Tokens]; Pair -> [chosen, rejected]; Unpaired -> [prompt + completion];
    Prompt -> [prompt with the generation header]; Text -> [ids + EOS]. A record that cannot be
    used gives its BadRow in place of the list.
    """
    batch = _Batch()
    plans: list[_Plan | BadRow | str] = []
    for record, label in zip(records, labels, strict=True):
        if isinstance(record, Text):
            plans.append(record.text)
            continue
        try:
            if template is None:
                raise DataError(
                    "the tokenizer has no chat template; set data.template to one of "
                    f"{sorted(BUILTIN)} (or a jinja string)"
                )
            plans.append(_plan(record, template, batch, label))
        except BadRow as e:
            plans.append(e)
    ids = batch.run(tokenizer)
    texts = [p for p in plans if isinstance(p, str)]
    text_ids = iter(_encode_texts(texts, tokenizer))
    out: list[list[Tokens] | BadRow] = []
    for plan in plans:
        if isinstance(plan, BadRow):
            out.append(plan)
        elif isinstance(plan, str):
            out.append([next(text_ids)])
        else:
            try:
                out.append(_read(plan, ids, batch, tokenizer))
            except BadRow as e:
                out.append(e)
    return out


def _encode_texts(texts: list[str], tokenizer: Any) -> list[Tokens]:
    """Pretraining documents: the tokenizer's own special tokens (BOS), then EOS; all learned."""
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        out.append(Tokens(np.asarray(ids, np.int32), ((0, len(ids)),)))
    return out
