"""Stage `orpo`: odds-ratio preference optimisation, no reference model (jaxtune.losses.orpo).

    jaxtune train --config=configs/orpo_lora.py --config.orpo.beta=0.1

Per pair: the chosen completion's NLL (its mean per-token negative log-prob, the SFT term, as
LlamaFactory takes it) minus `beta * log sigmoid(log odds(chosen) - log odds(rejected))`, on
average per-token log-probs. Chosen and rejected go through the model as one [2B, T] batch.
Reported like trl: rewards/* (beta * average log-prob), margins, accuracies, logps/*,
log_odds_ratio, log_odds_chosen, nll_loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from jaxtune.losses import orpo_loss
from jaxtune.losses.errors import LossConfigError
from jaxtune.train.pair_logps import masked_terms, mean_pair_logps
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "orpo"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(beta=0.1))  # weight of the odds-ratio term (trl: 0.1)


@dataclasses.dataclass(frozen=True)
class ORPOStage:
    """ORPO on pairs (see the module docstring). Hashable: static in jit."""

    beta: float = 0.1
    loss_chunk: int = 0
    name: str = "orpo"

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        chosen, rejected, valid = mean_pair_logps(model, params, batch, self.loss_chunk)
        one = lambda c, r, nll: orpo_loss(c, r, nll, beta=self.beta)
        return masked_terms(one, valid, chosen, rejected, -chosen)


def make_stage(config: Any) -> ORPOStage:
    beta = float(config.orpo.beta)
    if beta < 0:
        raise LossConfigError(f"config.orpo.beta must be >= 0, got {beta}")
    return ORPOStage(beta=beta, loss_chunk=int(config.train.loss_chunk))
