"""Completion log-probabilities for the preference and RL losses.

    logits = model.apply(params, cat["input_ids"], ...)            # cat = concat_pairs(batch)
    logps = sequence_logps(logits, cat["targets"], cat["loss_mask"])  # [2B], sum over completion
    chosen, rejected = split_pairs(logps)                           # [B] each

The batch contract's `targets` are next tokens and `loss_mask` marks the completion, so the sum
of `log p(targets[t])` where the mask is 1 is the completion's log-probability (trl's
`get_batch_logps` with -100 labels on the prompt). `log p` is taken as `logit[target] -
logsumexp(logits)`, which never builds a second [B, T, V] array (no full log-softmax);
`chunked_token_logps` goes further and never holds all the logits (see `chunked_lm_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.losses.lm import token_logprobs

PAIR_PREFIXES = ("chosen_", "rejected_")


def token_logps(
    logits: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array | None = None,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    """log p(targets[t]) [B, T] fp32 under softmax(logits / temperature); 0 where the mask is 0.

    Masked positions may hold any target (even out of range)."""
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    if loss_mask is None:
        return token_logprobs(logits, targets)
    mask = loss_mask.astype(jnp.float32)
    safe = jnp.where(mask > 0, targets, 0)
    return token_logprobs(logits, safe) * mask


def token_entropy(logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Entropy -sum p log p of each next-token distribution [B, T] fp32."""
    z = logits.astype(jnp.float32)
    if temperature != 1.0:
        z = z / temperature
    logp = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)  # fuses under jit: no extra [B,T,V]
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def masked_sum(x: jax.Array, mask: jax.Array, *, average: bool = False) -> jax.Array:
    """Sum (or mean, when `average`) of x [B, T] over the masked positions of each row -> [B]."""
    mask = mask.astype(jnp.float32)
    total = jnp.sum(x * mask, axis=-1)
    if average:
        return total / jnp.sum(mask, axis=-1)
    return total


def sequence_logps(
    logits: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    *,
    average: bool = False,
    temperature: float = 1.0,
) -> jax.Array:
    """Completion log-probability of each row [B]: the sum over masked tokens, or their mean
    (`average`, as ORPO and SimPO use; a row without counted tokens then gives NaN, as in trl)."""
    per_token = token_logps(logits, targets, loss_mask, temperature=temperature)
    return masked_sum(per_token, loss_mask, average=average)


def chunked_token_logps(
    hidden: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    loss_mask: jax.Array,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """`token_logps(logits_fn(hidden), ...)` [B, T] without holding all the logits at once.

    hidden [B, T, D]; logits_fn maps [N, D] -> [N, V] (the model's head). Tokens go through the
    head `chunk_size` at a time in a scan whose body is recomputed in the backward pass, so peak
    memory holds one chunk of logits. With `with_entropy`, also returns the entropy [B, T]
    (of every position, masked or not)."""
    b, t, d = hidden.shape
    n = b * t
    chunk = min(chunk_size, n)
    pad = (-n) % chunk
    h = hidden.reshape(n, d)
    mask = loss_mask.reshape(n).astype(jnp.float32)
    y = jnp.where(mask > 0, targets.reshape(n), 0).astype(jnp.int32)
    if pad:
        h = jnp.concatenate([h, jnp.zeros((pad, d), h.dtype)])
        y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad,), mask.dtype)])
    k = (n + pad) // chunk

    @jax.checkpoint
    def one_chunk(h_c: jax.Array, y_c: jax.Array, m_c: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = logits_fn(h_c).astype(jnp.float32)  # (chunk, V)
        if temperature != 1.0:
            logits = logits / temperature
        logp = token_logprobs(logits, y_c) * m_c
        ent = token_entropy(logits) if with_entropy else jnp.zeros_like(logp)
        return logp, ent

    def body(carry: None, xs: tuple[jax.Array, ...]) -> tuple[None, tuple[jax.Array, jax.Array]]:
        return carry, one_chunk(*xs)

    xs = (h.reshape(k, chunk, d), y.reshape(k, chunk), mask.reshape(k, chunk))
    _, (logp, ent) = jax.lax.scan(body, None, xs)
    logp = logp.reshape(-1)[:n].reshape(b, t)
    if with_entropy:
        return logp, ent.reshape(-1)[:n].reshape(b, t)
    return logp


def concat_pairs(batch: Mapping[str, Any], prefixes: tuple[str, str] = PAIR_PREFIXES) -> dict:
    """A preference batch (`chosen_*` and `rejected_*` keys, [B, T] each) -> one batch of
    [2B, T] arrays under the unprefixed names, chosen rows first, so that chosen and rejected go
    through the model together. Keys without either prefix are left out."""
    first, second = prefixes
    names = [k[len(first) :] for k in batch if k.startswith(first)]
    missing = [first + n for n in names if second + n not in batch]
    if missing or not names:
        raise KeyError(f"a preference batch needs {first}* and {second}* keys; missing {missing}")
    return {n: jnp.concatenate([batch[first + n], batch[second + n]], axis=0) for n in names}


def split_pairs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[2B, ...] -> (chosen [B, ...], rejected [B, ...]): the inverse of `concat_pairs`."""
    half = x.shape[0] // 2
    return x[:half], x[half:]
