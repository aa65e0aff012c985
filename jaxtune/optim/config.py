"""The `optim` config section: every key with its default, and a check of the values.

    config = optim.default_config()     # ml_collections.ConfigDict
    config.name = "galore"; config.galore.rank = 64
    optim.check_config(config)          # OptimError naming the key and the valid choices

Names follow LlamaFactory / transformers where one exists (`max_grad_norm`, `warmup_ratio`,
`loraplus_lr_ratio` -> `loraplus_ratio`, `galore_rank` -> `galore.rank`, `badam_switch_interval`
-> `badam.switch_every`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxtune.optim.errors import OptimError

NAMES = ("adamw", "sgd", "adafactor", "galore", "badam")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("none", "bf16", "pure_bf16")
PROJ_TYPES = ("std", "reverse_std", "left", "right")
SWITCH_MODES = ("ascending", "descending", "random", "fixed")
LORAPLUS_DEFAULT_RATIO = 16.0  # Hayou et al. 2024; what `loraplus_ratio` is set to when turned on


def galore_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            rank=16,  # r: state of an (m, n) weight is r x max(m, n)
            update_proj_gap=200,  # T: a new projector (SVD of the gradient) every T steps
            scale=0.25,  # alpha: the projected-back update is multiplied by it
            proj_type="std",  # std | reverse_std | left | right, as galore-torch (torch layout)
            targets="all-linear",  # "all-linear", module names "q_proj,v_proj", or a regex
        )
    )


def badam_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            switch_every=50,  # K: optimizer steps per block before switching
            switch_mode="ascending",  # ascending | descending | random | fixed
            start_block=-1,  # -1: first block of the order (last one for descending)
            block_size=1,  # decoder layers per block (a range of the stacked L axis)
            include_embedding=False,  # the embedding tables as one more block
            include_lm_head=False,  # lm_head and the final norm as one more block
            seed=0,  # order of the random mode (a new permutation every len(blocks) switches)
        )
    )


def default_config() -> ml_collections.ConfigDict:
    """The `optim` section with its defaults (full fine-tuning with AdamW)."""
    return ml_collections.ConfigDict(
        dict(
            name="adamw",  # adamw | sgd | adafactor | galore | badam
            lr=1e-4,  # peak learning rate (after warmup)
            schedule="cosine",  # cosine | linear | constant, after a linear warmup from 0
            warmup_steps=0,  # > 0 wins over warmup_ratio
            warmup_ratio=0.0,  # fraction of total_steps spent warming up
            total_steps=0,  # 0: the train loop's train.steps
            weight_decay=0.0,  # decoupled (AdamW); never on norms, biases, DoRA magnitudes
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            momentum=0.0,  # sgd only
            max_grad_norm=1.0,  # global-norm clipping over the trainable arrays; 0 = off
            grad_accum_steps=1,  # optax.MultiSteps inside the optimizer; jaxtune's train loop
            # accumulates in its step instead (train.grad_accum): keep this at 1 there
            loraplus_ratio=0.0,  # LoRA+: lr of B (and DoRA magnitudes) = ratio x lr; 0 = off
            loraplus_lr_embedding=1e-6,  # LoRA+: absolute lr of B of an adapted embedding
            embedding_lr=0.0,  # absolute lr of trainable embedding tables; 0 = lr
            mixed_precision="none",  # none | bf16 (fp32 master, bf16 compute) | pure_bf16
            galore=galore_config(),
            badam=badam_config(),
        )
    )


def _choice(config: Any, key: str, allowed: tuple[str, ...]) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    if value not in allowed:
        raise OptimError(f"optim.{key}={value!r} is not known; choose one of {', '.join(allowed)}.")


def check_config(config: Any) -> None:
    """Raise OptimError for a value that cannot work, naming the key and the valid values."""
    _choice(config, "name", NAMES)
    _choice(config, "schedule", SCHEDULES)
    _choice(config, "mixed_precision", PRECISIONS)
    _choice(config, "galore.proj_type", PROJ_TYPES)
    _choice(config, "badam.switch_mode", SWITCH_MODES)
    positive = {
        "lr": config.lr,
        "grad_accum_steps": config.grad_accum_steps,
        "galore.rank": config.galore.rank,
        "galore.update_proj_gap": config.galore.update_proj_gap,
        "badam.switch_every": config.badam.switch_every,
        "badam.block_size": config.badam.block_size,
    }
    for key, value in positive.items():
        if not value > 0:
            raise OptimError(f"optim.{key}={value!r} must be > 0.")
    non_negative = ("weight_decay", "max_grad_norm", "loraplus_ratio", "embedding_lr", "eps")
    for key in (*non_negative, "warmup_steps", "warmup_ratio", "total_steps", "momentum"):
        if config[key] < 0:
            raise OptimError(f"optim.{key}={config[key]!r} must be >= 0.")
    if config.warmup_ratio >= 1:
        raise OptimError(f"optim.warmup_ratio={config.warmup_ratio} must be < 1.")
