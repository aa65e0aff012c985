"""A rollout as one sequence per row: the left-padded prompt followed by the sampled response.

    prompt  [pad pad p0 p1 p2]   response [r0 r1 EOS pad]
    input_ids   [pad pad p0 p1 p2 r0 r1 EOS pad]      segment_ids [0 0 1 1 1 1 1 1 0]
    positions   [0   0   0  1  2  3  4  5   5 ]      response_ids / response_mask [B, N]

The hidden state at column P - 1 + i predicts response token i, so `response_hidden` slices
[P - 1, P - 1 + N): the log-probabilities, entropies and values of the response tokens (the value
of the state before token i, as trl's PPO takes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.losses.logprobs import chunked_token_logps
from jaxtune.train.stages.sft import model_inputs


def join(
    prompt_ids: np.ndarray, prompt_mask: np.ndarray, tokens: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """Prompts [B, P] and responses [B, N] -> the sequence keys of a rollout batch (numpy)."""
    valid = np.concatenate([np.asarray(prompt_mask) > 0, np.asarray(mask) > 0], axis=1)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    return {
        "input_ids": np.concatenate([prompt_ids, tokens], axis=1).astype(np.int32),
        "segment_ids": valid.astype(np.int32),
        "positions": positions.astype(np.int32),
        "response_ids": np.asarray(tokens, np.int32),
        "response_mask": np.asarray(mask, np.float32),
    }


def response_hidden(model: Any, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Hidden states [B, N, D] of the columns that predict the response tokens."""
    hidden, _ = model.hidden_states(params, batch["input_ids"], **model_inputs(batch))
    n = batch["response_ids"].shape[1]
    p = batch["input_ids"].shape[1] - n
    return hidden[:, p - 1 : p - 1 + n]


def response_logps(
    model: Any,
    params: Any,
    hidden: jax.Array,
    batch: dict[str, jax.Array],
    *,
    temperature: float,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log pi(response token) [B, N] at `temperature` (and the entropy [B, N]), the LM head run
    chunk by chunk (no [B, N, V] logits held at once)."""
    logits_fn: Callable[[jax.Array], jax.Array] = lambda h: model.logits(params, h)
    return chunked_token_logps(
        hidden,
        logits_fn,
        batch["response_ids"],
        batch["response_mask"],
        chunk_size=max(int(chunk_size), 1),
        temperature=temperature,
        with_entropy=with_entropy,
    )


def masked_row_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the masked entries of each row [B] (0 for an empty row)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
