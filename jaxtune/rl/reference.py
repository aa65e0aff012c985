"""The reference policy of the KL term: the base with adapters disabled, or a frozen copy.

    ref = Reference.for_run(run)
    ref_params = ref.params(current)        # call once per rollout, before the first step

With LoRA/DoRA/adapters (QLoRA too) the reference is `peft.disable(current)`: the frozen base,
no second copy, exact at every step. Full fine-tuning and freeze-tuning train the weights in
place, so the reference is a copy of the params taken at the first rollout (after a resume: the
resumed params). The value head never belongs to the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.rl.value_head import drop_value_head

ADAPTER_METHODS = ("lora", "dora", "adapter")


@dataclasses.dataclass
class Reference:
    disable_adapters: bool
    copy: Any = None

    @classmethod
    def for_run(cls, run: Any) -> Reference:
        return cls(disable_adapters=run.config.peft.method in ADAPTER_METHODS)

    def params(self, current: Any) -> Any:
        """The reference params for a rollout made with the policy `current`."""
        if self.disable_adapters:
            from jaxtune import peft

            return drop_value_head(peft.disable(current))
        if self.copy is None:  # new buffers: the train step donates the policy's
            self.copy = jax.tree.map(jnp.copy, drop_value_head(current))
        return self.copy
