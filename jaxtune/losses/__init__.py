"""Losses as pure functions of arrays (usable without the trainer).

    total, count = jaxtune.losses.lm_loss(logits, targets, loss_mask)   # sum over tokens, tokens
    loss = total / count                                                 # transformers' loss

Each stage's loss lives in its own file here (lm.py; dpo, rm, ppo ... beside it).
"""

from jaxtune.losses.lm import chunked_lm_loss, lm_loss, token_logprobs, token_nll

__all__ = ["chunked_lm_loss", "lm_loss", "token_logprobs", "token_nll"]
