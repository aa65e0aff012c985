"""The frozen reference policy of DPO, KTO, PPO and GRPO, at the smallest cost.

    ref = Reference.for_run(run, mode="auto")           # or Reference(mode="copy")
    ref_params = ref.params(current)                    # the params of the latest step in
    ref_logps = f(ref_params, batch)                    # any compiled log-prob function

Modes (`resolve_mode` turns "auto" into one of the first two):
    disable   LoRA / DoRA / adapters (QLoRA too): `peft.disable(current)`, the base with the
              adapters off. No second copy of any weight; exact at every step.
    copy      full fine-tuning, freeze-tuning, PiSSA (whose base is the residual, not the
              model): the params of the first call, kept. Only the trainable arrays are copied;
              the frozen ones never change and are shared. Not trained, not in the optimizer.
The third way to pay little, reference log-probs computed once and cached on disk, builds on
these (jaxtune.train.ref_cache). `strip` drops a stage's own leaves (a value head) from the
reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtune.errors import UserError

Params = Any
MODES = ("auto", "disable", "copy")
ADAPTER_METHODS = ("lora", "dora", "adapter")


def resolve_mode(mode: str, peft_method: str, peft_init: str = "default") -> str:
    """The mode to use, "disable" or "copy", for a requested mode and the PEFT settings."""
    if mode not in MODES:
        raise UserError(f"reference mode {mode!r}: one of {', '.join(MODES)}.")
    adapters = peft_method in ADAPTER_METHODS and peft_init != "pissa"
    if mode == "auto":
        return "disable" if adapters else "copy"
    if mode == "disable" and not adapters:
        why = (
            "PiSSA's base is the residual of the SVD, not the model"
            if peft_init == "pissa"
            else f"peft.method={peft_method!r} has no adapters to disable"
        )
        raise UserError(f"reference mode 'disable': {why}; use 'copy' (or 'auto').")
    return mode


def _identity(params: Params) -> Params:
    return params


def _copy_trainable(params: Params) -> Params:
    """New buffers for the arrays that train (the step donates them); frozen ones shared."""
    from jaxtune import peft

    trainable, frozen = peft.split_trainable(params)
    return peft.combine(jax.tree.map(jnp.copy, trainable), frozen)


@dataclasses.dataclass
class Reference:
    """Which params are the reference policy (see the module docstring)."""

    mode: str  # "disable" | "copy"
    strip: Callable[[Params], Params] = _identity
    _copy: Params = None

    @classmethod
    def for_run(
        cls, run: Any, mode: str = "auto", strip: Callable[[Params], Params] | None = None
    ) -> Reference:
        """The reference of a train run (`run.config.peft` decides what "auto" means)."""
        peft = run.config.peft
        resolved = resolve_mode(mode, str(peft.method), str(peft.get("init", "default")))
        return cls(resolved, strip or _identity)

    @property
    def copies(self) -> bool:
        return self.mode == "copy"

    def params(self, current: Params) -> Params:
        """The reference params, given the policy's current (combined) params."""
        if self.mode == "disable":
            from jaxtune import peft

            return self.strip(peft.disable(current))
        if self._copy is None:
            self._copy = _copy_trainable(self.strip(current))
        return self._copy


def disabled(params: Params) -> Params:
    """The reference inside a traced function when adapters are on (`peft.disable`, no gradient)."""
    from jaxtune import peft

    return jax.lax.stop_gradient(peft.disable(params))
