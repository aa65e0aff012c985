"""Losses as pure functions of arrays (usable without the trainer).

    total, count = jaxtune.losses.lm_loss(logits, targets, loss_mask)   # sum over tokens, tokens
    loss = total / count                                                 # transformers' loss

    out = jaxtune.losses.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                  beta=0.1, loss_type="sigmoid")         # LossTerms per pair

One loss family per file: lm (causal LM), logprobs (sequence log-probs, pair concat/split),
reward (value head, Bradley-Terry), dpo (sigmoid/ipo/hinge/robust/cdpo), orpo, simpo, kto,
ppo (GAE, whitening, clipped losses, KL estimators and controller), grpo, verifiable (rule-based
rewards). Each is checked against trl 1.16 or a numpy version of the published formula.
"""

from jaxtune.losses.dpo import DPO_LOSS_TYPES, dpo_loss, preference_metrics
from jaxtune.losses.errors import LossConfigError
from jaxtune.losses.grpo import GRPO_LOSS_TYPES, group_advantages, grpo_loss
from jaxtune.losses.kto import kto_kl, kto_loss, mismatched_rows
from jaxtune.losses.lm import chunked_lm_loss, lm_loss, token_logprobs, token_nll
from jaxtune.losses.logprobs import (
    chunked_token_logps,
    concat_pairs,
    masked_sum,
    sequence_logps,
    split_pairs,
    token_entropy,
    token_logps,
)
from jaxtune.losses.orpo import log1mexp, orpo_loss
from jaxtune.losses.ppo import (
    KL_ESTIMATORS,
    KLController,
    contains_eos,
    eos_penalty,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    mean_entropy,
    policy_loss,
    token_rewards,
    value_loss,
)
from jaxtune.losses.reward import (
    gather_last,
    init_value_head,
    last_token_index,
    pairwise_loss,
    sequence_reward,
    value_head,
)
from jaxtune.losses.simpo import simpo_loss
from jaxtune.losses.terms import LossTerms
from jaxtune.losses.verifiable import exact_match_reward, extract_answer, format_reward

__all__ = [
    "DPO_LOSS_TYPES",
    "GRPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "KLController",
    "LossConfigError",
    "LossTerms",
    "chunked_lm_loss",
    "chunked_token_logps",
    "concat_pairs",
    "contains_eos",
    "dpo_loss",
    "eos_penalty",
    "exact_match_reward",
    "explained_variance",
    "extract_answer",
    "format_reward",
    "gae",
    "gather_last",
    "group_advantages",
    "grpo_loss",
    "init_value_head",
    "kl_penalty",
    "kto_kl",
    "kto_loss",
    "last_token_index",
    "lm_loss",
    "log1mexp",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mean_entropy",
    "mismatched_rows",
    "orpo_loss",
    "pairwise_loss",
    "policy_loss",
    "preference_metrics",
    "sequence_logps",
    "sequence_reward",
    "simpo_loss",
    "split_pairs",
    "token_entropy",
    "token_logprobs",
    "token_logps",
    "token_nll",
    "token_rewards",
    "value_head",
    "value_loss",
]
