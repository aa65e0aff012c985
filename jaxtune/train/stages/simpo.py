"""Stage `simpo`: simple preference optimisation, no reference model (jaxtune.losses.simpo).

    jaxtune train --config=configs/simpo_lora.py --config.simpo.beta=2.0 --config.simpo.gamma=0.5

Per pair, on average per-token log-probs: `-log sigmoid(beta * (chosen - rejected) - gamma)`
(with `label_smoothing`, trl's CPOTrainer loss_type "simpo"); `sft_weight` > 0 adds that times
the chosen completion's NLL (CPO-SimPO, trl's cpo_alpha). Chosen and rejected go through the
model as one [2B, T] batch. Reported like trl: rewards/*, margins, accuracies, logps/*.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from jaxtune.losses import simpo_loss
from jaxtune.losses.errors import LossConfigError
from jaxtune.train.pair_logps import masked_terms, mean_pair_logps
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "simpo"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            beta=2.0,  # scale of the length-normalised reward (the paper: 2.0-2.5)
            gamma=0.5,  # target reward margin (trl's simpo_gamma)
            label_smoothing=0.0,  # 0..0.5
            sft_weight=0.0,  # > 0: add the chosen NLL (CPO-SimPO; trl's cpo_alpha)
        )
    )


@dataclasses.dataclass(frozen=True)
class SimPOStage:
    """SimPO on pairs (see the module docstring). Hashable: static in jit."""

    beta: float = 2.0
    gamma: float = 0.5
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    loss_chunk: int = 0
    name: str = "simpo"

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        chosen, rejected, valid = mean_pair_logps(model, params, batch, self.loss_chunk)

        def one(c, r, nll):
            return simpo_loss(
                c,
                r,
                beta=self.beta,
                gamma=self.gamma,
                label_smoothing=self.label_smoothing,
                chosen_nll=nll if self.sft_weight else None,
                sft_weight=self.sft_weight,
            )

        return masked_terms(one, valid, chosen, rejected, -chosen)


def make_stage(config: Any) -> SimPOStage:
    c = config.simpo
    stage = SimPOStage(
        beta=float(c.beta),
        gamma=float(c.gamma),
        label_smoothing=float(c.label_smoothing),
        sft_weight=float(c.sft_weight),
        loss_chunk=int(config.train.loss_chunk),
    )
    if stage.beta <= 0 or not 0.0 <= stage.label_smoothing <= 0.5 or stage.sft_weight < 0:
        raise LossConfigError(
            f"config.simpo: beta must be > 0 (got {stage.beta}), label_smoothing in [0, 0.5] "
            f"(got {stage.label_smoothing}), sft_weight >= 0 (got {stage.sft_weight})."
        )
    return stage
