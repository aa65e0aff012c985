"""The train state: everything a step reads and writes, in one pytree.

    TrainState
    ├── step       int32 scalar: optimizer steps done
    ├── params     the trainable params (the whole model for full fine-tuning, the adapter
    │              leaves for PEFT runs; frozen weights travel beside the state, not in it)
    ├── opt_state  the optax state of `params`
    └── rng        the run's base key; step s uses fold_in(rng, s), so a resumed run draws
                   the same randomness as an uninterrupted one

The data iterator's position is host-side (a JSON-able dict) and is checkpointed with the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(
        cls, params: Any, optimizer: optax.GradientTransformation, rng: jax.Array
    ) -> TrainState:
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=rng,
        )

    def step_rng(self) -> jax.Array:
        """The key of the current step (independent of how the run was interrupted)."""
        return jax.random.fold_in(self.rng, self.step)
