"""Judges: who decides which response is better.

    RuleJudge("my_module.score")      a Python reward function (jaxtune.rl.rewards convention:
                                      fn(completions, prompts=..., **columns) -> floats)
    RewardModelJudge(path)            a jaxtune reward model's score of prompt + response
    LLMScoreJudge(path)               an LLM asked for a 1-10 rating (templates.SCORE)
    LLMPairwiseJudge(path)            an LLM asked "A or B?" (templates.PAIRWISE)

A scorer's `scores(prompts, responses, columns)` returns one float per response or None where its
answer could not be parsed; a pairwise judge's `choose(prompts, a, b)` returns "A", "B" or None.
LLM judges answer greedily, in batches, with their own chat template.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtune.label import templates


@dataclasses.dataclass
class RuleJudge:
    """Scores from a Python reward function (built-ins: exact_match, format; or a dotted path)."""

    name: str

    def scores(
        self, prompts: Sequence[str], responses: Sequence[str], columns: dict[str, list]
    ) -> list[float | None]:
        from jaxtune.rl.rewards import call_reward, resolve

        fn = resolve(self.name)
        out = call_reward(self.name, fn, list(responses), {"prompts": list(prompts), **columns})
        return [float(x) for x in out]


@dataclasses.dataclass
class LLMJudge:
    """An LLM loaded with jaxtune that answers judging prompts greedily."""

    path: str
    max_new_tokens: int = 8
    batch_size: int = 16
    _loaded: Any = None

    def load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            from jaxtune import models

            model, params = models.load(self.path)
            self._loaded = (model, params, models.load_tokenizer(self.path))
        return self._loaded

    def answer(self, texts: Sequence[str]) -> list[str]:
        from jaxtune.generate import generate_text

        model, params, tokenizer = self.load()
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            out += generate_text(
                model, params, tokenizer, chunk, max_new_tokens=self.max_new_tokens
            )
        return out


@dataclasses.dataclass
class LLMPairwiseJudge(LLMJudge):
    template: str = templates.PAIRWISE

    def choose(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
    ) -> list[str | None]:
        texts = [
            templates.pairwise_prompt(p, x, y, self.template)
            for p, x, y in zip(prompts, a, b, strict=True)
        ]
        return [templates.parse_choice(t) for t in self.answer(texts)]


@dataclasses.dataclass
class LLMScoreJudge(LLMJudge):
    template: str = templates.SCORE

    def scores(
        self, prompts: Sequence[str], responses: Sequence[str], columns: dict[str, list]
    ) -> list[float | None]:
        texts = [
            templates.score_prompt(p, r, self.template)
            for p, r in zip(prompts, responses, strict=True)
        ]
        return [templates.parse_score(t) for t in self.answer(texts)]


@dataclasses.dataclass
class RewardModelJudge:
    """A reward model's score of the chat [user: prompt, assistant: response]."""

    path: str
    batch_size: int = 16

    def scores(
        self, prompts: Sequence[str], responses: Sequence[str], columns: dict[str, list]
    ) -> list[float | None]:
        from jaxtune import models
        from jaxtune.generate.prompts import left_pad
        from jaxtune.rl.rewards import reward_tokenizer

        model, params, head = models.load_reward_model(self.path)
        tokenizer = reward_tokenizer(self.path, "--judge-model")
        ids = [chat_ids(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        out: list[float | None] = []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for i in range(0, len(ids), self.batch_size):
            batch, mask = left_pad(ids[i : i + self.batch_size], pad)
            out += [float(s) for s in np.asarray(models.score(model, params, head, batch, mask))]
        return out


def chat_ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Token ids of one user/assistant exchange (the chat template when there is one)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt + response)["input_ids"])
