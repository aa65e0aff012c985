"""Causal language-model cross-entropy over the batch contract's `targets` and `loss_mask`.

The loss of a batch is a sum over the counted tokens divided by their number, which is what
transformers computes for labels with -100 on the ignored positions. Functions return the sum and
the count separately so that micro-batches (gradient accumulation) and devices add up exactly.

`chunked_lm_loss` takes final hidden states instead of logits and computes the LM head and the
cross-entropy chunk by chunk under `jax.checkpoint`, so the fp32 logits [B, T, V] over the whole
vocabulary never exist at once (forward or backward).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets) [B, T] fp32 from logits [B, T, V]."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - log_z


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood of each target [B, T] fp32."""
    return -token_logprobs(logits, targets)


def lm_loss(
    logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token NLLs, number of counted tokens), both fp32 scalars.

    logits [B, T, V]; targets [B, T] int (the next token); loss_mask [B, T] (1.0 = counted).
    Positions with mask 0 contribute nothing, whatever their target (it may be out of range).
    """
    mask = loss_mask.astype(jnp.float32)
    safe_targets = jnp.where(mask > 0, targets, 0)
    nll = token_nll(logits, safe_targets)
    return jnp.sum(nll * mask), jnp.sum(mask)


def chunked_lm_loss(
    hidden: jax.Array,
    logits_fn: Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    loss_mask: jax.Array,
    chunk_size: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """`lm_loss(logits_fn(hidden), ...)` without materialising all logits at once.

    hidden [B, T, D]; logits_fn maps [N, D] -> [N, V] (the model's head). Tokens are flattened
    and processed `chunk_size` at a time in a scan whose body is rematerialised in the backward
    pass, so peak memory holds one chunk of logits instead of B*T rows.
    """
    b, t, d = hidden.shape
    n = b * t
    chunk = min(chunk_size, n)
    pad = (-n) % chunk
    h = hidden.reshape(n, d)
    y = targets.reshape(n).astype(jnp.int32)
    m = loss_mask.reshape(n).astype(jnp.float32)
    if pad:
        h = jnp.concatenate([h, jnp.zeros((pad, d), h.dtype)])
        y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        m = jnp.concatenate([m, jnp.zeros((pad,), m.dtype)])
    k = (n + pad) // chunk

    @jax.checkpoint
    def chunk_sum(h_c: jax.Array, y_c: jax.Array, m_c: jax.Array) -> jax.Array:
        logits = logits_fn(h_c)  # (chunk, V)
        nll = token_nll(logits, jnp.where(m_c > 0, y_c, 0))
        return jnp.sum(nll * m_c)

    def body(total: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
        return total + chunk_sum(*xs), None

    xs = (h.reshape(k, chunk, d), y.reshape(k, chunk), m.reshape(k, chunk))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, jnp.sum(m)
