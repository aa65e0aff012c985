"""The functional decoder shared by every family.

`logits = model.apply(params, input_ids, ...)` is a pure function of a params pytree:

    params
    ├── embed_tokens/embedding            (V, D)
    ├── embed_positions/embedding         (P, D)        GPT-2 only
    ├── layers/                           every leaf has a leading layer axis L
    │   ├── input_layernorm/{scale,bias}  (L, D)
    │   ├── self_attn/{q,k,v,o}_proj/kernel (L, in, out) or fused qkv_proj; optional bias
    │   ├── self_attn/{q,k}_norm/scale    (L, head_dim)  Qwen3, Gemma 3
    │   ├── post_attention_layernorm/...  (L, D)
    │   ├── pre/post_feedforward_layernorm  (L, D)      Gemma 2/3
    │   └── mlp/{gate,up,down}_proj/kernel  or gate_up_proj (fused)
    ├── norm/{scale,bias}                 (D,)
    └── lm_head/kernel                    (D, V)        absent when embeddings are tied

Kernels are stored `[in, out]` (transformers stores `[out, in]`); the loader transposes. Layers
run under `lax.scan`, so compile time does not grow with depth; per-layer differences (sliding or
global attention) ride along as scanned flags. `unstack_layers(params)` gives `layers` as a tuple
of per-layer trees, which run unrolled: generation's decode loop uses it (a memory-bound step
should not copy each layer's weights out of the stack).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models import attention as attn_lib
from jaxtune.models import rope as rope_lib
from jaxtune.models.config import ModelConfig
from jaxtune.models.layers import activation, layer_norm, linear, rms_norm, softcap

Params = dict[str, Any]
Cache = dict[str, jax.Array]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def param_shapes(cfg: ModelConfig) -> Params:
    """The nested dict of parameter shapes for a config (the loader checks against it)."""
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    ln = cfg.norm == "layer"

    def norm(dim: int, stacked: bool = True) -> dict[str, tuple[int, ...]]:
        shape = (L, dim) if stacked else (dim,)
        return {"scale": shape, "bias": shape} if ln else {"scale": shape}

    def proj(n_in: int, n_out: int, bias: bool) -> dict[str, tuple[int, ...]]:
        out = {"kernel": (L, n_in, n_out)}
        if bias:
            out["bias"] = (L, n_out)
        return out

    attn: Params = {}
    if cfg.fused_qkv:
        attn["qkv_proj"] = proj(D, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias)
    else:
        attn["q_proj"] = proj(D, cfg.q_size, cfg.qkv_bias)
        attn["k_proj"] = proj(D, cfg.kv_size, cfg.qkv_bias)
        attn["v_proj"] = proj(D, cfg.kv_size, cfg.qkv_bias)
    attn["o_proj"] = proj(cfg.q_size, D, cfg.o_bias)
    if cfg.qk_norm:
        attn["q_norm"] = {"scale": (L, cfg.head_dim)}
        attn["k_norm"] = {"scale": (L, cfg.head_dim)}

    mlp: Params = {}
    if cfg.fused_gate_up:
        mlp["gate_up_proj"] = proj(D, 2 * F, cfg.mlp_bias)
    elif cfg.gated_mlp:
        mlp["gate_proj"] = proj(D, F, cfg.mlp_bias)
        mlp["up_proj"] = proj(D, F, cfg.mlp_bias)
    else:
        mlp["up_proj"] = proj(D, F, cfg.mlp_bias)
    mlp["down_proj"] = proj(F, D, cfg.mlp_bias)

    layers: Params = {"input_layernorm": norm(D), "self_attn": attn}
    layers["post_attention_layernorm"] = norm(D)
    if cfg.sandwich_norms:
        layers["pre_feedforward_layernorm"] = norm(D)
        layers["post_feedforward_layernorm"] = norm(D)
    layers["mlp"] = mlp

    shapes: Params = {"embed_tokens": {"embedding": (cfg.vocab_size, D)}}
    if cfg.learned_positions:
        shapes["embed_positions"] = {"embedding": (cfg.max_position_embeddings, D)}
    shapes["layers"] = layers
    shapes["norm"] = norm(D, stacked=False)
    if not cfg.tie_embeddings:
        shapes["lm_head"] = {"kernel": (D, cfg.vocab_size)}
    return shapes


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """A decoder-only language model: a config plus pure functions of params.

    compute_dtype: activations' dtype (None: that of the embedding); weights are cast to it
      inside `linear`, so fp32 master weights with bf16 compute need no second copy.
    remat: "none" | "full" | "dots", the checkpoint policy of the scanned layer.
    attention_impl: a key of `attention.ATTENTION_IMPLS` ("auto": fused kernels on GPU/TPU and
      the exact "reference" on CPU).
    """

    config: ModelConfig
    compute_dtype: Any = None
    remat: str = "none"
    attention_impl: str = "auto"

    # ---------------------------------------------------------------- parameters
    def param_shapes(self) -> Params:
        return param_shapes(self.config)

    def init(self, rng: jax.Array, dtype: Any = jnp.float32, std: float = 0.02) -> Params:
        """Random params (normal(0, std) matrices, unit norms), e.g. for benchmarks."""
        shapes = self.param_shapes()
        leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
        paths = [
            jax.tree_util.keystr(p)
            for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
        ]
        keys = jax.random.split(rng, len(leaves))
        out = []
        for key, shape, path in zip(keys, leaves, paths, strict=True):
            if "'scale'" in path:
                fill = 0.0 if self.config.norm_plus_one else 1.0
                out.append(jnp.full(shape, fill, dtype))
            elif "'bias'" in path:
                out.append(jnp.zeros(shape, dtype))
            else:
                out.append((std * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
        return jax.tree.unflatten(treedef, out)

    # ---------------------------------------------------------------- forward
    def apply(
        self,
        params: Params,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: Cache | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        """Logits [B, T, V] (fp32). With `cache`, returns (logits, updated cache)."""
        hidden, new_cache = self.hidden_states(
            params,
            input_ids,
            positions=positions,
            attention_mask=attention_mask,
            segment_ids=segment_ids,
            cache=cache,
        )
        logits = self.logits(params, hidden)
        return logits if cache is None else (logits, new_cache)

    def logits(self, params: Params, hidden: jax.Array) -> jax.Array:
        """The LM head on final hidden states [..., D] -> fp32 logits [..., V]."""
        if self.config.tie_embeddings:
            emb = params["embed_tokens"]["embedding"]
            out = jnp.einsum("...d,vd->...v", hidden, emb.astype(hidden.dtype))
        else:
            out = linear(hidden, params["lm_head"]["kernel"])
        return softcap(out.astype(jnp.float32), self.config.final_softcap)

    def hidden_states(
        self,
        params: Params,
        input_ids: jax.Array,
        *,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: Cache | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Final normalised hidden states [B, T, D] (and the updated cache)."""
        cfg = self.config
        b, t = input_ids.shape
        valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if positions is None:
            positions = default_positions(valid, segment_ids, cache)

        x = self._embed(params, input_ids, positions)

        # Slots: the index of each token in the row (or in the cache).
        if cache is None:
            q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
            k_slots = jnp.arange(t)
            k_valid = valid
            k_segments = segment_ids
        else:
            start = cache["index"]
            q_slots = jnp.broadcast_to(start + jnp.arange(t), (b, t))
            k_slots = jnp.arange(cache["valid"].shape[1])
            k_valid = jax.lax.dynamic_update_slice(cache["valid"], valid, (0, start))
            k_segments = None
        full_mask = attn_lib.causal_mask(q_slots, k_slots, k_valid, segment_ids, k_segments)
        sliding_mask = None
        if cfg.has_sliding_layers:
            sliding_mask = attn_lib.causal_mask(
                q_slots, k_slots, k_valid, segment_ids, k_segments, window=cfg.sliding_window
            )

        rope_global = rope_local = None
        if not cfg.learned_positions:
            rope_global = rope_lib.cos_sin(cfg.rope, cfg.head_dim, positions)
            if cfg.rope_local is not None:
                rope_local = rope_lib.cos_sin(cfg.rope_local, cfg.head_dim, positions)

        is_sliding = jnp.asarray(np.array([k == "sliding" for k in cfg.layer_kinds]))

        def layer(x, scanned):
            p, sliding, kv = scanned
            mask = (
                full_mask if sliding_mask is None else jnp.where(sliding, sliding_mask, full_mask)
            )
            rope = rope_global
            if rope_local is not None:
                rope = jax.tree.map(
                    lambda loc, glo: jnp.where(sliding, loc, glo), rope_local, rope_global
                )
            x, kv = self._layer(p, x, mask, rope, kv, None if cache is None else cache["index"])
            return x, kv

        policy = REMAT_POLICIES[self.remat]
        if self.remat != "none":
            layer = jax.checkpoint(layer, policy=policy, prevent_cse=False)

        kv_in = None if cache is None else (cache["k"], cache["v"])
        if isinstance(params["layers"], tuple):  # unstacked (see `unstack_layers`)
            x, kv_out = unrolled_layers(layer, x, params["layers"], is_sliding, kv_in)
        else:
            x, kv_out = jax.lax.scan(layer, x, (params["layers"], is_sliding, kv_in))

        x = self._norm(params["norm"], x)
        new_cache = None
        if cache is not None:
            new_cache = {
                "k": kv_out[0],
                "v": kv_out[1],
                "valid": k_valid,
                "index": cache["index"] + t,
            }
        return x, new_cache

    # ---------------------------------------------------------------- pieces
    def _embed(self, params: Params, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
        cfg = self.config
        emb = params["embed_tokens"]["embedding"]
        dtype = self.compute_dtype or emb.dtype
        x = jnp.take(emb, input_ids, axis=0).astype(dtype)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
        if cfg.learned_positions:
            x = x + jnp.take(params["embed_positions"]["embedding"], positions, axis=0).astype(
                dtype
            )
        return x

    def _norm(self, p: Params, x: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.norm == "layer":
            return layer_norm(x, p["scale"], p["bias"], cfg.norm_eps)
        return rms_norm(x, p["scale"], cfg.norm_eps, cfg.norm_plus_one)

    def _layer(self, p: Params, x, mask, rope, kv, cache_index):
        cfg = self.config
        h = self._norm(p["input_layernorm"], x)
        attn_out, kv = self._attention(p["self_attn"], h, mask, rope, kv, cache_index)
        if cfg.sandwich_norms:
            attn_out = self._norm(p["post_attention_layernorm"], attn_out)
            x = x + attn_out
            h = self._norm(p["pre_feedforward_layernorm"], x)
            x = x + self._norm(p["post_feedforward_layernorm"], self._mlp(p["mlp"], h))
        else:
            x = x + attn_out
            h = self._norm(p["post_attention_layernorm"], x)
            x = x + self._mlp(p["mlp"], h)
        return x, kv

    def _attention(self, p: Params, h, mask, rope, kv, cache_index):
        cfg = self.config
        b, t, _ = h.shape
        if cfg.fused_qkv:
            qkv = linear(h, p["qkv_proj"]["kernel"], p["qkv_proj"].get("bias"))
            q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
        else:
            q = linear(h, p["q_proj"]["kernel"], p["q_proj"].get("bias"))
            k = linear(h, p["k_proj"]["kernel"], p["k_proj"].get("bias"))
            v = linear(h, p["v_proj"]["kernel"], p["v_proj"].get("bias"))
        q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)  # (B, T, H, hd)
        k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)  # (B, T, K, hd)
        v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q = rms_norm(q, p["q_norm"]["scale"], cfg.norm_eps, cfg.norm_plus_one)
            k = rms_norm(k, p["k_norm"]["scale"], cfg.norm_eps, cfg.norm_plus_one)
        if rope is not None:
            q = rope_lib.apply_rope(q, *rope)
            k = rope_lib.apply_rope(k, *rope)
        scale = (cfg.query_scale or cfg.head_dim) ** -0.5
        if kv is not None:  # write this chunk into the cache, attend over the whole cache
            k_cache, v_cache = kv  # (B, K, S, hd): head-major, a decode step needs no transpose
            idx = (0, 0, cache_index, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, heads_major(k, k_cache.dtype), idx)
            v_cache = jax.lax.dynamic_update_slice(v_cache, heads_major(v, v_cache.dtype), idx)
            kv = (k_cache, v_cache)
            k, v = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
            out = attn_lib.cached_attention(
                self.attention_impl, q, k, v, mask, scale, cfg.attn_softcap
            )
        else:
            attend = attn_lib.ATTENTION_IMPLS[self.attention_impl]
            out = attend(q, k, v, mask, scale, cfg.attn_softcap)
        out = out.reshape(b, t, cfg.q_size)
        return linear(out, p["o_proj"]["kernel"], p["o_proj"].get("bias")), kv

    def _mlp(self, p: Params, h):
        cfg = self.config
        if cfg.fused_gate_up:
            gate, up = jnp.split(
                linear(h, p["gate_up_proj"]["kernel"], p["gate_up_proj"].get("bias")), 2, axis=-1
            )
            h = activation(cfg.activation, gate) * up
        elif cfg.gated_mlp:
            gate = linear(h, p["gate_proj"]["kernel"], p["gate_proj"].get("bias"))
            up = linear(h, p["up_proj"]["kernel"], p["up_proj"].get("bias"))
            h = activation(cfg.activation, gate) * up
        else:
            h = activation(
                cfg.activation, linear(h, p["up_proj"]["kernel"], p["up_proj"].get("bias"))
            )
        return linear(h, p["down_proj"]["kernel"], p["down_proj"].get("bias"))

    # ---------------------------------------------------------------- cache
    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> Cache:
        """An empty KV cache of `max_len` slots per row.

        k, v: (L, B, K, max_len, head_dim); valid: (B, max_len) bool, the slots written with real
        tokens; index: the next slot to write. Pass it to `hidden_states`/`apply` and use the
        cache they return.
        """
        cfg = self.config
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "valid": jnp.zeros((batch, max_len), bool),
            "index": jnp.zeros((), jnp.int32),
        }


def unstack_layers(params: Params) -> Params:
    """params with `layers` as a tuple of per-layer trees (each leaf without the layer axis).

    `hidden_states` then runs the layers in an unrolled Python loop on separate buffers: no
    per-layer dynamic slice copies the weights, which is what a memory-bound KV-cache decode
    step pays for under `lax.scan` (generation does this once, outside its decode loop). Compile
    time grows with depth, so training keeps the stacked layers.
    """
    layers = params.get("layers") if isinstance(params, dict) else None
    if not isinstance(layers, dict):  # already unstacked, or not a jaxtune decoder's params
        return params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n))}


def unstack_cache(cache: Cache) -> Cache:
    """The cache with k and v as tuples of per-layer (B, K, S, hd) arrays, the form the unrolled
    layers of `unstack_layers` update in place (a stacked cache costs them a copy per step)."""
    if isinstance(cache["k"], tuple):
        return cache
    n = cache["k"].shape[0]
    return {**cache, **{name: tuple(cache[name][i] for i in range(n)) for name in ("k", "v")}}


def unrolled_layers(layer_fn, x, layers: tuple, is_sliding: jax.Array, kv):
    """The layer scan as a Python loop over unstacked layers. The cache comes back in the form
    it came in: per-layer tuples (updated in place), or stacked arrays (re-stacked)."""
    if kv is None:
        for i, p in enumerate(layers):
            x, _ = layer_fn(x, (p, is_sliding[i], None))
        return x, None
    stacked = not isinstance(kv[0], tuple)
    ks, vs = (list(c) for c in kv)
    for i, p in enumerate(layers):
        x, (ks[i], vs[i]) = layer_fn(x, (p, is_sliding[i], (ks[i], vs[i])))
    if stacked:
        return x, (jnp.stack(ks), jnp.stack(vs))
    return x, (tuple(ks), tuple(vs))


def heads_major(x: jax.Array, dtype: Any) -> jax.Array:
    """(B, T, K, hd) -> (B, K, T, hd) in the cache's dtype."""
    return x.transpose(0, 2, 1, 3).astype(dtype)


def default_positions(
    valid: jax.Array, segment_ids: jax.Array | None, cache: Cache | None
) -> jax.Array:
    """Positions that skip padding (left or right) and restart with each packed segment."""
    if segment_ids is not None:
        b, t = segment_ids.shape
        starts = jnp.concatenate(
            [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
        )
        idx = jnp.broadcast_to(jnp.arange(t), (b, t))
        start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
        return idx - start_idx
    pos = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    if cache is not None:
        pos = pos + jnp.sum(cache["valid"], axis=1, keepdims=True).astype(jnp.int32)
    return jnp.maximum(pos, 0)
