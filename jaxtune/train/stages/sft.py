"""Stage `sft`: causal-LM loss on the tokens the data worker marks in `loss_mask`.

The batch contract's `targets` are the next tokens and `loss_mask` selects the assistant turns,
so the loss equals transformers' causal-LM loss with -100 on the other labels. With
`train.loss_chunk > 0` the LM head and the cross-entropy run chunk by chunk (no [B, T, V] fp32
logits), which saves memory and time for large vocabularies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxtune.losses import chunked_lm_loss, lm_loss
from jaxtune.train.stages import Batch, LossOutput, Params


def model_inputs(batch: Batch, prefix: str = "") -> dict[str, Any]:
    """The keyword arguments of `model.apply` / `hidden_states` for one sequence of a batch."""
    segment_ids = batch[prefix + "segment_ids"]
    return dict(
        positions=batch[prefix + "positions"],
        segment_ids=segment_ids,
        attention_mask=segment_ids > 0,
    )


@dataclasses.dataclass(frozen=True)
class LMStage:
    """Causal LM on `targets` where `loss_mask` is 1 (see the module docstring)."""

    name: str = "sft"
    loss_chunk: int = 0  # tokens per chunk of the LM head + loss; 0 = all logits at once

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        hidden, _ = model.hidden_states(params, batch["input_ids"], **model_inputs(batch))
        if self.loss_chunk > 0:
            total, count = chunked_lm_loss(
                hidden,
                lambda h: model.logits(params, h),
                batch["targets"],
                batch["loss_mask"],
                self.loss_chunk,
            )
        else:
            logits = model.logits(params, hidden)
            total, count = lm_loss(logits, batch["targets"], batch["loss_mask"])
        return LossOutput(total, count, {})


def make_stage(config: Any) -> LMStage:
    return LMStage(name="sft", loss_chunk=int(config.train.loss_chunk))
