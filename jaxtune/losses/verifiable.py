"""Verifiable rewards for GRPO / PPO: plain Python functions of the decoded completions.

    rewards = exact_match_reward(completions, answer=["42", "7"])    # [1.0, 0.0]
    rewards = format_reward(completions)                             # <think>...</think><answer>...

Each takes `completions: list[str]` plus per-row keyword columns of the dataset (trl's reward
function convention) and returns one float per completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

THINK_ANSWER = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_HASHES = re.compile(r"####\s*([^\n]+)")
_SAID = re.compile(r"answer is[:\s]*\$?([^\n]+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: <answer>...</answer>, then \\boxed{...}, then
    '#### x' (GSM8K), then 'the answer is x', then the last number; None if there is none."""
    for found in (
        _TAGGED.findall(text),
        [_boxed(text)],
        _HASHES.findall(text),
        _SAID.findall(text),
    ):
        found = [f for f in found if f is not None and f.strip()]
        if found:
            return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """A canonical form for comparison: trimmed, lower case, no surrounding $ or final period;
    numbers without thousands separators or trailing zeros (\"1,000.50\" -> \"1000.5\")."""
    s = answer.strip().strip("$").strip().rstrip(".").strip().lower()
    number = s.replace(",", "")
    if _NUMBER.fullmatch(number):
        value = float(number)
        return str(int(value)) if value == int(value) else repr(value)
    return " ".join(s.split())


def exact_match_reward(
    completions: Sequence[str], answer: Sequence[str], **_: object
) -> list[float]:
    """1.0 where the extracted answer equals the reference answer (both normalised), else 0."""
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} reference answers")
    out = []
    for text, ref in zip(completions, answer, strict=True):
        got = extract_answer(text)
        out.append(float(got is not None and normalize_answer(got) == normalize_answer(str(ref))))
    return out


def format_reward(
    completions: Sequence[str], pattern: str = THINK_ANSWER, **_: object
) -> list[float]:
    """1.0 where the whole completion matches `pattern` (default: reasoning in <think> tags,
    then the answer in <answer> tags), else 0."""
    regex = re.compile(pattern, re.DOTALL)
    return [1.0 if regex.fullmatch(text) else 0.0 for text in completions]
