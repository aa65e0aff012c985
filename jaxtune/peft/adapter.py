"""Houlsby adapters (Houlsby et al. 2019): a bottleneck `y + up(act(down(y)))` after attention and
after the MLP of each layer.

In a jaxtune decoder the outputs of `o_proj` and `down_proj` go straight into the residual add (or
Gemma's post-norm), so a leaf that wraps those kernels and returns

    y = x @ W;   y + act(y @ down + down_bias) @ up + up_bias

is exactly Houlsby's placement, with no change to the model. Both projections start from a
truncated normal with std 1e-2 (the paper's near-identity init). The base's own bias (if any) is
added after the adapter by `linear`, which only shifts `down_bias`.

    layers/mlp/down_proj/kernel (L,F,D)  ->  AdapterWeight(base (L,F,D) frozen,
                                                 down (L,D,m), down_bias (L,m),
                                                 up (L,m,D), up_bias (L,D))

Adapters are nonlinear: they cannot be merged into a dense weight (`materialize` refuses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxtune.peft.errors import MergeError
from jaxtune.peft.lora import check_rank, check_unadapted, leaf_rngs
from jaxtune.peft.select import Targets, map_selected, select
from jaxtune.peft.weight import AdapterLeaf, base_linear, dense_shape

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
RESIDUAL_WRITERS = ("o_proj", "down_proj")  # the kernels whose output enters the residual


@struct.dataclass
class AdapterWeight(AdapterLeaf):
    """A frozen `base` [..., in, out] followed by a bottleneck adapter on its output."""

    base: Any
    down: jax.Array  # [..., out, m]
    down_bias: jax.Array  # [..., m]
    up: jax.Array  # [..., m, out]
    up_bias: jax.Array  # [..., out]
    activation: str = struct.field(pytree_node=False, default="silu")

    trainable_fields = {  # noqa: RUF012
        "down": "adapter",
        "down_bias": "adapter",
        "up": "adapter",
        "up_bias": "adapter",
    }

    def linear(self, x: jax.Array) -> jax.Array:
        y = base_linear(x, self.base)
        dt = y.dtype
        y2 = y.reshape(-1, y.shape[-1])  # one token axis: see weight.low_rank
        h = ACTIVATIONS[self.activation](
            jnp.dot(y2, self.down.astype(dt)) + self.down_bias.astype(dt)
        )
        out = y2 + jnp.dot(h, self.up.astype(dt)) + self.up_bias.astype(dt)
        return out.reshape(y.shape)

    def materialize(self) -> jax.Array:
        raise MergeError(
            "a Houlsby adapter is nonlinear and has no dense weight: it cannot be merged, "
            "exported to PEFT format, or used through peft.wrap. Keep the adapter leaves (the "
            "jaxtune model runs them natively) or train LoRA/DoRA instead."
        )


def adapter(
    params: Any,
    targets: Targets = RESIDUAL_WRITERS,
    *,
    bottleneck: int = 64,
    activation: str = "silu",
    init_std: float = 1e-2,
    rng: jax.Array,
    dtype: Any = jnp.float32,
) -> Any:
    """Wrap the selected kernels (by default `o_proj` and `down_proj`: after attention and after
    the MLP) in `AdapterWeight`s with a `bottleneck`-wide hidden layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; choose one of {sorted(ACTIVATIONS)}")
    paths = select(params, targets)
    keys = leaf_rngs(rng, paths)

    def wrap(path: str, w: Any) -> AdapterWeight:
        check_unadapted(path, w)
        shape = dense_shape(w)
        *lead, _, n_out = shape
        check_rank(path, (n_out, n_out), bottleneck, what="bottleneck")
        k_down, k_up = jax.random.split(keys[path])

        def normal(k: jax.Array, s: tuple[int, ...]) -> jax.Array:
            return (init_std * jax.random.truncated_normal(k, -2.0, 2.0, s)).astype(dtype)

        return AdapterWeight(
            base=w,
            down=normal(k_down, (*lead, n_out, bottleneck)),
            down_bias=jnp.zeros((*lead, bottleneck), dtype),
            up=normal(k_up, (*lead, bottleneck, n_out)),
            up_bias=jnp.zeros((*lead, n_out), dtype),
            activation=activation,
        )

    return map_selected(params, paths, wrap)
