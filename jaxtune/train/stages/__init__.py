"""Stages: what a training step optimises. Each stage is one module of this package.

A stage is a small object (see `Stage`) that turns a batch into a loss. Everything else (the
train state, the jitted step with its shardings, gradient accumulation, the loop, checkpoints,
logging, eval) is shared. `jaxtune.train.stages.<name>` must define `make_stage(config) -> Stage`;
`config.stage = "<name>"` selects it, so a new stage (rm, dpo, ppo, ...) is a new file here and
nothing else changes.

    pt     causal LM on plain text                 (pt.py)
    sft    causal LM on the assistant tokens only  (sft.py; the mask comes from the data worker)
    rm     reward model: scalar head, Bradley-Terry loss on preference pairs       (rm.py)
    dpo    DPO (sigmoid / ipo / hinge / robust / cdpo) against a reference           (dpo.py)
    orpo   SFT + odds-ratio preference term, no reference                            (orpo.py)
    simpo  length-normalised margin, no reference                                    (simpo.py)
    kto    desirable / undesirable completions against a reference point           (kto.py)
    ppo    rollouts, KL-shaped rewards, GAE, clipped policy and value losses       (ppo.py)
    grpo   k rollouts per prompt, group-normalised advantages, KL to the reference (grpo.py)

Optional, per stage module or stage object:
    CONFIG_SECTION = "dpo" and default_config() -> ConfigDict   a config section of its own
                                                                (checked like every other key)
    stage.init_params(model, params, rng)     add weights (a value head). Note: with PEFT on,
                                              peft.split_trainable freezes plain arrays, so a
                                              head must be a leaf peft counts as trainable
    stage.train_batches(run, batches, current_params)   make the train batches (PPO rollouts)
    stage.export_params(params)               what `jaxtune export` writes (drop a value head)
    stage.head_of(params)                     a scalar head: export as a sequence classifier
    stage.eval_batches(run, batches, current_params)   complete eval batches (reference logps)
The data worker is asked for batches with `stage=<name>` (jaxtune.data.make_batches).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

from jaxtune.errors import UserError

Params = Any
Batch = Mapping[str, jax.Array]


class LossOutput(NamedTuple):
    """What a stage's loss returns for one (micro-)batch.

    total: the sum of the per-unit losses over the batch (fp32 scalar); the loss that is
      optimised and reported is `total / weight`, summed over micro-batches and devices first.
    weight: the number of units (counted tokens for LM losses, pairs for preference losses).
    metrics: name -> sum over the batch, reported divided by `weight`; or name -> (sum, count),
      reported as sum / count (e.g. a per-pair accuracy in a per-token loss).
    """

    total: jax.Array
    weight: jax.Array
    metrics: dict[str, Any]


@runtime_checkable
class Stage(Protocol):
    """A training objective. Implementations are frozen dataclasses (hashable, static in jit).

    name: the config value of `stage` (also tells the data worker which batches to make).
    """

    name: str

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        """Add the stage's own weights (a value head, ...) to the loaded params."""
        ...

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        """The loss of one batch (pure; traced inside the jitted step)."""
        ...


class BatchHook(Protocol):
    """Optional: a stage that makes its own train batches (e.g. PPO rollouts) defines
    `train_batches(run, batches, current_params) -> iterator of batches`, where `batches` is the
    data worker's iterator and `current_params()` returns the params of the latest step."""

    def train_batches(
        self, run: Any, batches: Iterator[Batch], current_params: Callable[[], Params]
    ) -> Iterator[Batch]: ...


def available() -> list[str]:
    """The stage names this installation knows."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def make_stage(config: Any) -> Stage:
    """The stage named by `config.stage`."""
    name = str(config.stage)
    if name not in available():
        import difflib

        near = difflib.get_close_matches(name, available(), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UserError(f"config.stage={name!r} is not a stage; one of {available()}.{hint}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.make_stage(config)
