"""Batched generation: one prefill call, then a KV-cache decode loop compiled as one while_loop.

    prompt [B, P] (left-padded) ──prefill──► cache (P + N slots), logits of the last column
         └─► sample token 0 ─► while i < N and some row has not hit EOS:
                                 decode 1 token/row with the cache ─► sample token i

The whole of `generate` is one jitted function per (batch, bucketed prompt length,
max_new_tokens, sampling settings, model): no per-token Python dispatch and no retracing.
Params are a traced argument, so new weights (a PPO step, LoRA leaves) reuse the compile.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import UserError
from jaxtune.generate.prompts import bucket_length, check_left_padded, pad_to_length
from jaxtune.generate.sampling import SamplingConfig, sample
from jaxtune.models.decoder import unstack_cache, unstack_layers

Params = dict[str, Any]


class GenerationOutput(NamedTuple):
    """What `generate` returns (a pytree; all arrays have N = max_new_tokens columns).

    tokens: [B, N] int32 generated tokens; `pad_id` after a row's EOS.
    mask: [B, N] bool, True for the generated tokens up to and including the first EOS.
    lengths: [B] int32, the number of True entries of mask.
    logprobs: [B, N] fp32 log-probability of each token under softmax(logits / temperature)
      (softmax(logits) when greedy), before top-k/top-p; 0 where mask is False.
    finished: [B] bool, True where the row emitted an EOS (False: cut at max_new_tokens).
    """

    tokens: jax.Array
    mask: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    finished: jax.Array


def generate(
    model: Any,
    params: Params,
    prompt_ids: Any,
    prompt_mask: Any,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: tuple[int, ...] | list[int] = (),
    pad_id: int = 0,
    rng: jax.Array | None = None,
    bucket: bool = True,
) -> GenerationOutput:
    """Continue left-padded prompts [B, P] (mask 1 on real tokens) by up to max_new_tokens.

    temperature 0 is greedy; otherwise tokens are sampled (pass `rng`) after temperature,
    top-k (0: off) and top-p (1.0: off), in transformers' order. A row stops after any of
    `eos_ids`; the loop stops when every row has. `bucket` left-pads P to a power of two so that
    prompt lengths within a bucket share one compile. Inside your own jit (a PPO rollout) it works
    the same, without the bucketing and the input checks, which need concrete arrays.
    """
    sampling = SamplingConfig(float(temperature), int(top_k), float(top_p))
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rng is None:
        if not sampling.greedy:
            raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(seed)")
        rng = jax.random.key(0)
    if not isinstance(prompt_mask, jax.core.Tracer):
        prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        check_left_padded(prompt_mask)
        check_positions(model.config, int(prompt_mask.sum(axis=1).max()), max_new_tokens)
        if bucket:
            length = bucket_length(prompt_ids.shape[1])
            prompt_ids, prompt_mask = pad_to_length(prompt_ids, prompt_mask, length, pad_id)
    return _generate(
        model,
        params,
        jnp.asarray(prompt_ids, jnp.int32),
        jnp.asarray(prompt_mask, bool),
        rng,
        eos_array(eos_ids),
        jnp.asarray(pad_id, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        sampling=sampling,
    )


def eos_array(eos_ids: Any) -> jax.Array:
    """EOS ids as int32 [E], E a multiple of 4 (filled with -1), so most sets share a compile."""
    ids = [int(i) for i in eos_ids]
    size = max(4, -(-len(ids) // 4) * 4)
    return jnp.asarray(ids + [-1] * (size - len(ids)), jnp.int32)


def check_positions(config: Any, prompt_length: int, max_new_tokens: int) -> None:
    """Learned position tables (GPT-2) end at max_position_embeddings."""
    needed = prompt_length + max_new_tokens - 1
    if config.learned_positions and needed > config.max_position_embeddings:
        raise UserError(
            f"a prompt of {prompt_length} tokens plus {max_new_tokens} new tokens needs "
            f"{needed} positions, but this {config.family} model has "
            f"{config.max_position_embeddings}: shorten the prompt or lower max_new_tokens"
        )


class _LoopState(NamedTuple):
    step: jax.Array  # int32 scalar: the column written next
    token: jax.Array  # [B] the token fed to the next decode step
    done: jax.Array  # [B] bool: the row has emitted an EOS
    tokens: jax.Array  # [B, N]
    mask: jax.Array  # [B, N]
    logprobs: jax.Array  # [B, N]
    cache: dict[str, jax.Array]
    rng: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling"))
def _generate(
    model: Any,
    params: Params,
    prompt_ids: jax.Array,  # (B, P) int32
    prompt_mask: jax.Array,  # (B, P) bool
    rng: jax.Array,
    eos: jax.Array,  # (E,) int32, -1 entries never match
    pad_id: jax.Array,  # int32 scalar
    *,
    max_new_tokens: int,
    sampling: SamplingConfig,
) -> GenerationOutput:
    b, p = prompt_ids.shape
    n = max_new_tokens
    cache_dtype = model.compute_dtype or params["embed_tokens"]["embedding"].dtype
    cache = model.init_cache(b, p + n, cache_dtype)

    hidden, cache = model.hidden_states(
        params, prompt_ids, attention_mask=prompt_mask, cache=cache
    )  # (B, P, D)
    rng, key = jax.random.split(rng)
    token, logprob = sample(model.logits(params, hidden[:, -1]), key, sampling)

    def record(state: _LoopState, token: jax.Array, logprob: jax.Array) -> _LoopState:
        alive = ~state.done
        token = jnp.where(alive, token, pad_id)
        i = state.step
        return state._replace(
            step=i + 1,
            token=token,
            done=state.done | (jnp.isin(token, eos) & alive),
            tokens=state.tokens.at[:, i].set(token),
            mask=state.mask.at[:, i].set(alive),
            logprobs=state.logprobs.at[:, i].set(jnp.where(alive, logprob, 0.0)),
        )

    state = _LoopState(
        step=jnp.zeros((), jnp.int32),
        token=token,
        done=jnp.zeros((b,), bool),
        tokens=jnp.full((b, n), pad_id, jnp.int32),
        mask=jnp.zeros((b, n), bool),
        logprobs=jnp.zeros((b, n), jnp.float32),
        cache=cache,
        rng=rng,
    )
    state = record(state, token, logprob)
    if n == 1:  # the prefill made the only token: no loop, no unstacking
        return _output(state)
    # On CPU, once, outside the loop: the loop body then runs the layers on separate weight and
    # cache buffers (no per-token copies of stacked weights; measured 1.5x less decode CPU time).
    # It holds a second copy of the weights for the call, so accelerators (unmeasured) keep the
    # layer scan.
    loop_params = params
    if jax.default_backend() == "cpu":
        loop_params = unstack_layers(params)
    if loop_params is not params:
        state = state._replace(cache=unstack_cache(state.cache))

    def cond(state: _LoopState) -> jax.Array:
        return (state.step < n) & ~jnp.all(state.done)

    def body(state: _LoopState) -> _LoopState:
        hidden, cache = model.hidden_states(
            loop_params,
            state.token[:, None],
            attention_mask=jnp.ones((b, 1), bool),
            cache=state.cache,
        )  # (B, 1, D)
        rng, key = jax.random.split(state.rng)
        token, logprob = sample(model.logits(loop_params, hidden[:, 0]), key, sampling)
        return record(state._replace(cache=cache, rng=rng), token, logprob)

    return _output(jax.lax.while_loop(cond, body, state))


def _output(state: _LoopState) -> GenerationOutput:
    return GenerationOutput(
        tokens=state.tokens,
        mask=state.mask,
        lengths=jnp.sum(state.mask, axis=1, dtype=jnp.int32),
        logprobs=state.logprobs,
        finished=state.done,
    )
