"""Sampling rollouts from the policy with jaxtune.generate's compiled sampler.

    rollout = sample(model, params, prompts, settings, eos_ids=..., pad_id=..., rng=key)
    texts = decode(tokenizer, rollout.tokens, rollout.mask)

`generate` runs the prefill and the whole KV-cache decode loop as one jitted function (a
`while_loop`; no per-token Python dispatch) and takes the params as a traced argument, so a new
policy after each PPO step reuses the compile. Prompts are repeated `group_size` times first
(GRPO's k samples per prompt, rows of a group consecutive).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.generate import generate
from jaxtune.rl.settings import RolloutSettings

PROMPT_KEYS = ("prompt_ids", "prompt_mask")


@dataclasses.dataclass
class Rollout:
    """Host arrays of one rollout. tokens/mask [B, N] (mask: real tokens up to and including
    EOS), finished [B] (EOS was emitted), columns: the prompt batch's other keys (`answer`)."""

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray
    finished: np.ndarray
    columns: dict[str, np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)


def repeat_rows(batch: dict[str, Any], k: int) -> dict[str, np.ndarray]:
    """Each row k times, consecutively ([p0 p0 p1 p1] for k = 2)."""
    if k == 1:
        return {key: np.asarray(v) for key, v in batch.items()}
    return {key: np.repeat(np.asarray(v), k, axis=0) for key, v in batch.items()}


def sample(
    model: Any,
    params: Any,
    prompts: dict[str, Any],
    settings: RolloutSettings,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    rng: jax.Array,
) -> Rollout:
    """Sample `settings.group_size` responses per prompt of a prompt batch (see module doc)."""
    batch = repeat_rows(prompts, settings.group_size)
    out = generate(
        model,
        params,
        batch["prompt_ids"],
        batch["prompt_mask"],
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        eos_ids=tuple(eos_ids),
        pad_id=pad_id,
        rng=rng,
        bucket=False,
    )
    tokens, mask, finished = jax.device_get((out.tokens, out.mask, out.finished))
    return Rollout(
        prompt_ids=batch["prompt_ids"].astype(np.int32),
        prompt_mask=batch["prompt_mask"].astype(np.int32),
        tokens=np.asarray(tokens, np.int32),
        mask=np.asarray(mask, bool),
        finished=np.asarray(finished, bool),
        columns={k: v for k, v in batch.items() if k not in PROMPT_KEYS},
    )


def decode(tokenizer: Any, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """The text of each row's masked tokens, special tokens (EOS) removed."""
    return [
        tokenizer.decode(row[m.astype(bool)].tolist(), skip_special_tokens=True)
        for row, m in zip(np.asarray(ids), np.asarray(mask), strict=True)
    ]
