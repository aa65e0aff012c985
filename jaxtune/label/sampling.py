"""Candidates sampled from a policy: k responses per prompt (jaxtune.generate, one batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def add_samples(
    rows: Sequence[dict[str, Any]],
    policy: str,
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Rows with `k` sampled responses appended to their `responses`."""
    from jaxtune import models
    from jaxtune.generate import generate_text

    model, params = models.load(policy)
    tokenizer = models.load_tokenizer(policy)
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts += generate_text(
            model,
            params,
            tokenizer,
            prompts[i : i + batch_size],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed + i,
        )
    out = []
    for j, row in enumerate(rows):
        out.append({**row, "responses": list(row["responses"]) + texts[j * k : (j + 1) * k]})
    return out
