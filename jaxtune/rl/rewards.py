"""Where a rollout's scores come from: Python reward functions and/or a reward model.

    source = RewardSource.create(settings, policy_tokenizer, policy_vocab)
    scores = source(rollout, prompts=texts, completions=texts)          # np.ndarray [B]

Reward functions follow trl's convention: `fn(completions, prompts=..., completion_ids=...,
**columns) -> list[float]` (columns: the prompt set's extra fields, e.g. `answer`). Built-ins
(from jaxtune.losses.verifiable): `exact_match` (the extracted final answer equals `answer`) and
`format` (<think>...</think><answer>...</answer>). Anything else is a dotted path
`package.module.function` (or `package.module:function`). Several are comma-separated and
summed with `reward_weights`. A reward model (jaxtune.models.load_reward_model: an exported
sequence classifier or a `rm` run directory) scores the prompt + response tokens; it must share
the policy's tokenizer.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.errors import UserError
from jaxtune.losses import verifiable
from jaxtune.rl.rollout import Rollout
from jaxtune.rl.settings import RolloutSettings

RewardFn = Callable[..., Sequence[float]]
BUILTINS: dict[str, RewardFn] = {
    "exact_match": verifiable.exact_match_reward,
    "format": verifiable.format_reward,
}


def resolve(name: str) -> RewardFn:
    """A built-in reward by name, or a function by dotted path."""
    name = name.strip()
    if name in BUILTINS:
        return BUILTINS[name]
    module_name, sep, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name:
        raise UserError(
            f"reward function {name!r} is neither a built-in ({', '.join(BUILTINS)}) nor a "
            "dotted path like 'my_package.rewards.my_reward'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(
            f"reward function {name!r}: cannot import module {module_name!r} ({e}); put it on "
            "PYTHONPATH or install it."
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward function {name!r}: {module_name} has no function {attr!r}.")
    return fn


def parse_weights(text: str, n: int, where: str) -> list[float]:
    if not text.strip():
        return [1.0] * n
    weights = [float(w) for w in text.split(",") if w.strip()]
    if len(weights) != n:
        raise UserError(f"{where}: {len(weights)} weights for {n} reward functions.")
    return weights


def call_reward(
    name: str, fn: RewardFn, completions: list[str], kwargs: dict[str, Any]
) -> np.ndarray:
    """fn's scores as float32 [B], checked for count and finiteness."""
    out = np.asarray(fn(completions, **kwargs), np.float32).reshape(-1)
    if out.shape[0] != len(completions):
        raise UserError(
            f"reward function {name!r} returned {out.shape[0]} scores for {len(completions)} "
            "completions: return one float per completion."
        )
    if not np.isfinite(out).all():
        raise UserError(f"reward function {name!r} returned a non-finite score: {out.tolist()}")
    return out


@dataclasses.dataclass
class RewardModelScorer:
    """A reward model's score of each prompt + response, laid out as its training pairs were:
    the response's EOS replaced by what the chat template puts after an assistant turn (e.g.
    "<|im_end|>\n"), so the score is read at the same kind of last token as in training."""

    model: Any
    params: Any
    head: Any
    path: str
    suffix: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()

    @classmethod
    def load(
        cls, path: str, policy_tokenizer: Any, where: str, eos_ids: Sequence[int] = ()
    ) -> RewardModelScorer:
        from jaxtune import models

        check_same_tokenizer(reward_tokenizer(path, where), policy_tokenizer, path)
        model, params, head = models.load_reward_model(path)
        return cls(model, params, head, path, turn_suffix(policy_tokenizer), tuple(eos_ids))

    def sequences(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ids [B, L] and mask of prompt + response (EOS dropped) + suffix."""
        from jaxtune.generate.prompts import left_pad

        rows = []
        for p_ids, p_mask, r_ids, r_mask in zip(
            rollout.prompt_ids, rollout.prompt_mask, rollout.tokens, rollout.mask, strict=True
        ):
            response = [t for t in r_ids[r_mask].tolist() if t not in self.eos_ids]
            rows.append(p_ids[p_mask > 0].tolist() + response + list(self.suffix))
        return left_pad(rows, 0)

    def __call__(self, rollout: Rollout) -> np.ndarray:
        from jaxtune.models import score

        ids, mask = self.sequences(rollout)
        top = int(ids.max())
        if top >= self.model.config.vocab_size:
            raise UserError(
                f"reward model {self.path}: token id {top} is outside its vocabulary of "
                f"{self.model.config.vocab_size}; use a reward model with the policy's tokenizer."
            )
        scores = score(self.model, self.params, self.head, ids, mask)
        return np.asarray(jax.device_get(scores), np.float32)


def turn_suffix(tokenizer: Any) -> tuple[int, ...]:
    """Token ids the chat template writes after an assistant message's text ("<|im_end|>\n");
    () without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return ()
    marker = "\x00END\x00"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = text.split(marker, 1)[1] if marker in text else ""
    return tuple(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else ()


def reward_tokenizer(path: str, where: str) -> Any:
    """The tokenizer of a reward model: of its checkpoint, or of the model a `rm` run trained
    (model.tokenizer or model.path of the run's config.json)."""
    import json
    from pathlib import Path

    from jaxtune import models

    location = Path(path)
    if not location.exists():
        raise UserError(f"{where}={path!r}: no such directory.")
    if (location / "tokenizer_config.json").exists() or (location / "tokenizer.json").exists():
        return models.load_tokenizer(path)
    for directory in (location, *location.parents[:3]):
        config = directory / "config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            if "model" in data and "stage" in data:  # a jaxtune run's config
                m = data["model"]
                source = m.get("tokenizer") or m.get("path")
                if not source:
                    from jaxtune.hub.smollm2 import smollm2_path

                    source = str(smollm2_path())
                return models.load_tokenizer(source)
    return models.load_tokenizer(path)


def check_same_tokenizer(rm_tokenizer: Any, policy_tokenizer: Any, path: str) -> None:
    """A reward model reads the policy's token ids, so both must use one vocabulary."""
    if rm_tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise UserError(
            f"reward model {path}: its tokenizer ({len(rm_tokenizer)} tokens) differs from the "
            f"policy's ({len(policy_tokenizer)} tokens), so it would read the policy's token ids "
            "as other words. Train the reward model from the policy's base (same tokenizer)."
        )


@dataclasses.dataclass
class RewardSource:
    """The sum of the configured reward functions (weighted) and the reward model's score."""

    functions: list[tuple[str, RewardFn, float]]
    model: RewardModelScorer | None
    section: str = "ppo"

    @classmethod
    def create(
        cls, settings: RolloutSettings, policy_tokenizer: Any, eos_ids: Sequence[int] = ()
    ) -> RewardSource:
        s = settings.section
        names = [n.strip() for n in settings.reward_fn.split(",") if n.strip()]
        weights = parse_weights(settings.reward_weights, len(names), f"config.{s}.reward_weights")
        functions = [(n, resolve(n), w) for n, w in zip(names, weights, strict=True)]
        model = None
        if settings.reward_model:
            model = RewardModelScorer.load(
                settings.reward_model, policy_tokenizer, f"config.{s}.reward_model", eos_ids
            )
        return cls(functions, model, s)

    def __call__(
        self, rollout: Rollout, prompts: list[str], completions: list[str]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """(scores [B], {"reward/<name>": mean} per source)."""
        kwargs: dict[str, Any] = {k: list(v) for k, v in rollout.columns.items()}
        kwargs["prompts"] = prompts
        kwargs["completion_ids"] = [
            row[m].tolist() for row, m in zip(rollout.tokens, rollout.mask, strict=True)
        ]
        total = np.zeros(len(completions), np.float32)
        parts: dict[str, float] = {}
        for name, fn, weight in self.functions:
            out = call_reward(name, fn, completions, kwargs)
            parts[f"reward/{name.rsplit('.', 1)[-1]}"] = float(out.mean())
            total += weight * out
        if self.model is not None:
            out = self.model(rollout)
            parts["reward/model"] = float(out.mean())
            total += out
        return total, parts
