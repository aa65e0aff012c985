"""Stage `rm`: a reward model, trained on preference pairs with the Bradley-Terry loss.

    jaxtune train --config=configs/rm_lora.py
    jaxtune export --checkpoint runs/rm_lora --out exported/rm   # LlamaForSequenceClassification
    jaxtune eval --checkpoint runs/rm_lora --config.data.eval=pairs.jsonl   # accuracy, margin

The reward of a sequence (prompt + answer) is a scalar head [D, 1] on the hidden state of its
last token, params["score"] (transformers' `score` layer transposed, no bias). Chosen and
rejected go through the model as one [2B, T] batch; the loss per pair is trl's RewardTrainer's

    -log sigmoid(r_chosen - r_rejected - margin) + rm.center_rewards_coefficient
                                                   * (r_chosen + r_rejected)^2

where `margin` is the batch's `margin` [B] when the data gives one (0 otherwise). Reported:
accuracy (r_chosen > r_rejected), margin (r_chosen - r_rejected), mean_reward,
rewards/chosen, rewards/rejected. With data.packing a row holds several pairs: each segment is
scored at its own last token. With PEFT the head trains beside the adapters (it is recorded as
a trainable array of a `peft.FreezeParams` root) and is part of the adapter-only checkpoints.
Starting from a reward model (model.path = an exported `*ForSequenceClassification`) keeps its
head. Hooks beyond the Stage protocol: `set_head(params, head)`, `head_of(params)` (the export
writes a sequence classifier with it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtune.errors import UserError
from jaxtune.losses.logprobs import concat_pairs, split_pairs
from jaxtune.losses.reward import init_value_head, pairwise_loss, value_head
from jaxtune.models.reward_model import HEAD_KEY
from jaxtune.train.pair_logps import LM_KEYS, masked_terms, segment_sums
from jaxtune.train.stages import Batch, LossOutput, Params
from jaxtune.train.stages.sft import model_inputs

CONFIG_SECTION = "rm"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            center_rewards_coefficient=0.0,  # > 0: + c (r_chosen + r_rejected)^2 (trl; 1e-2)
            head_init_std=0.02,  # std of the fresh head (transformers' initializer_range)
        )
    )


def set_head(params: Params, head: dict[str, jax.Array]) -> Params:
    """params with `head` at params["score"], trainable whatever the PEFT method."""
    from jaxtune import peft
    from jaxtune.peft.weight import AdapterLeaf

    entry = (f"{HEAD_KEY}/kernel", True)
    if isinstance(params, peft.FreezeParams):
        spec = (*(s for s in params.spec if s[0] != entry[0]), entry)
        return peft.FreezeParams({**params, HEAD_KEY: head}, spec)
    is_adapter = lambda x: isinstance(x, AdapterLeaf)
    if any(is_adapter(x) for x in jax.tree.leaves(params, is_leaf=is_adapter)):
        return peft.FreezeParams({**params, HEAD_KEY: head}, (entry,))
    return {**params, HEAD_KEY: head}


def last_token_mask(segment_ids: jax.Array) -> jax.Array:
    """[N, T] 1.0 at the last token of each segment (a sequence's last non-pad token)."""
    nxt = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
    return ((segment_ids > 0) & (nxt != segment_ids)).astype(jnp.float32)


def segment_rewards(model: Any, params: Params, seq: Batch) -> tuple[jax.Array, jax.Array]:
    """(reward, count) [N, T]: column s-1 is the reward of segment s of each row (count 1) or 0
    (count 0) where the row has no segment s."""
    hidden, _ = model.hidden_states(params, seq["input_ids"], **model_inputs(seq))
    segment_ids = seq["segment_ids"]
    last = last_token_mask(segment_ids)
    values = value_head(params[HEAD_KEY], hidden)  # [N, T]; D -> 1 costs nothing next to it
    return segment_sums(values, last, segment_ids)


@dataclasses.dataclass(frozen=True)
class RewardStage:
    """Bradley-Terry reward modelling (see the module docstring). Hashable: static in jit."""

    center_coef: float = 0.0
    head_init_std: float = 0.02
    name: str = "rm"

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        head = init_value_head(rng, model.config.hidden_size, std=self.head_init_std)
        return set_head(params, head)

    set_head = staticmethod(set_head)

    @staticmethod
    def head_of(params: Params) -> dict[str, jax.Array]:
        return params[HEAD_KEY]

    @staticmethod
    def export_params(params: Params) -> Params:
        """The backbone (the head is written separately, as `score.weight`)."""
        return {k: v for k, v in params.items() if k != HEAD_KEY}

    def rewards(self, model: Any, params: Params, batch: Batch):
        """(chosen, rejected, valid) [B, T] per pair unit, one forward pass for both."""
        cat = concat_pairs({p + k: batch[p + k] for p in ("chosen_", "rejected_") for k in LM_KEYS})
        values, counts = segment_rewards(model, params, cat)
        (chosen, rejected), (nc, nr) = split_pairs(values), split_pairs(counts)
        return chosen, rejected, (nc > 0) & (nr > 0)

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        chosen, rejected, valid = self.rewards(model, params, batch)
        center = self.center_coef if self.center_coef > 0 else None
        if "margin" in batch:  # [B]: the pair of row b (one pair per row)
            margin = jnp.zeros_like(chosen).at[:, 0].set(batch["margin"].astype(jnp.float32))

            def one(c, r, m):
                return pairwise_loss(c, r, margin=m, center_coef=center)

            return masked_terms(one, valid, chosen, rejected, margin)

        def plain(c, r):
            return pairwise_loss(c, r, center_coef=center)

        return masked_terms(plain, valid, chosen, rejected)


def make_stage(config: Any) -> RewardStage:
    c = config.rm
    coef = float(c.center_rewards_coefficient)
    if coef < 0:
        raise UserError(f"config.rm.center_rewards_coefficient={coef} must be >= 0 (0 = off).")
    return RewardStage(center_coef=coef, head_init_std=float(c.head_init_std))
