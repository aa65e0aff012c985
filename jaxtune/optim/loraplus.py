"""Learning rates per array: LoRA+ (Hayou et al. 2024) and a separate embedding learning rate.

LoRA+ trains B with `loraplus_ratio` times the learning rate of A (16 in the paper). As in
LlamaFactory's `_create_loraplus_optimizer`, the 1-D extras of an adapter (DoRA magnitudes) go with
B, and the B of an adapted embedding gets the absolute `loraplus_lr_embedding` (1e-6).
Independently, `embedding_lr` > 0 sets the absolute learning rate of trainable embedding tables.

The result is a factor on the schedule: every group follows the same warmup and decay, scaled
(what a torch LambdaLR does to param groups with different initial learning rates).
"""

from __future__ import annotations

from typing import Any

from jaxtune.optim.labels import DORA_MAGNITUDE, EMBEDDING, LORA_B, TRAINABLE, LeafInfo


def lr_scale(config: Any, info: LeafInfo) -> float:
    """The factor on `config.lr` for this array."""
    if config.loraplus_ratio > 0:
        if info.role == LORA_B and info.kind == EMBEDDING:
            return config.loraplus_lr_embedding / config.lr
        if info.role in (LORA_B, DORA_MAGNITUDE):
            return float(config.loraplus_ratio)
    if config.embedding_lr > 0 and info.role == TRAINABLE and info.kind == EMBEDDING:
        return config.embedding_lr / config.lr
    return 1.0
