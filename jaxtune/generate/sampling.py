"""Next-token sampling as pure functions of fp32 logits [B, V].

The warpers follow transformers' semantics and order: temperature, then top-k, then top-p
(nucleus). A filtered token gets logit -inf, so it has probability zero.

    logits ─► / temperature ─► top_k (keep the k best, ties kept) ─► top_p (smallest set whose
    probability >= p, at least one token) ─► categorical sample      (temperature 0: argmax)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtune.errors import UserError

FILTERED = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token. temperature 0 is greedy; top_k 0 and top_p 1.0 disable them."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    """logits / temperature (temperature > 0)."""
    return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the logits >= the k-th largest of each row (ties at the boundary are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, FILTERED, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p.

    As transformers does it: sort ascending, drop tokens while the cumulative probability from the
    bottom is <= 1 - p, and always keep the most likely token.
    """
    if p >= 1.0:
        return logits
    order = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    sorted_remove = cumulative <= (1.0 - p)
    sorted_remove = sorted_remove.at[..., -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    remove = jnp.zeros_like(sorted_remove).at[rows, order].set(sorted_remove)
    return jnp.where(remove, FILTERED, logits)


def warp(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """The filtered, temperature-scaled logits that a sampled token is drawn from."""
    logits = apply_temperature(logits, config.temperature)
    logits = top_k_filter(logits, config.top_k)
    return top_p_filter(logits, config.top_p)


def sample(
    logits: jax.Array, rng: jax.Array | None, config: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row of logits [B, V].

    Returns (tokens [B] int32, logprobs [B] fp32): the log-probability of each picked token under
    softmax(logits / temperature) before top-k/top-p filtering (under softmax(logits) when
    greedy), the quantity that PPO and GRPO take ratios of.
    """
    logits = logits.astype(jnp.float32)
    if config.greedy:
        tokens = jnp.argmax(logits, axis=-1)
        scaled = logits
    else:
        scaled = apply_temperature(logits, config.temperature)
        tokens = jax.random.categorical(rng, warp(logits, config), axis=-1)
    logprobs = jnp.take_along_axis(
        jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1
    ).squeeze(-1)
    return tokens.astype(jnp.int32), logprobs
