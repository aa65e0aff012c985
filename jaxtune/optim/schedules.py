"""Learning-rate schedules: a linear warmup from 0, then cosine, linear or constant.

They follow transformers' `get_{cosine,linear,constant}_schedule_with_warmup` (LlamaFactory's
`lr_scheduler_type`): at step s < warmup the lr is lr * s / warmup; then cosine decays to 0 at
`total_steps` along half a cosine, linear decays to 0 in a straight line, constant stays.
"""

from __future__ import annotations

import math
from typing import Any

import optax

from jaxtune.optim.errors import OptimError


def warmup_steps(config: Any, total_steps: int) -> int:
    """`warmup_steps` when set, else ceil(warmup_ratio * total_steps) (transformers' rule)."""
    if config.warmup_steps > 0:
        return int(config.warmup_steps)
    return math.ceil(config.warmup_ratio * total_steps)


def total_steps_of(config: Any, total_steps: int | None) -> int:
    """`optim.total_steps` when set, else the loop's step count."""
    total = int(config.total_steps) or int(total_steps or 0)
    if total <= 0 and (config.schedule != "constant" or config.warmup_ratio > 0):
        raise OptimError(
            f"optim.schedule={config.schedule!r} needs the number of steps: set "
            "optim.total_steps (or pass total_steps=train.steps to optim.build)."
        )
    return total


def schedule(config: Any, total_steps: int | None = None) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (0 on the first update)."""
    total = total_steps_of(config, total_steps)
    warmup = warmup_steps(config, total)
    lr = float(config.lr)
    if config.schedule != "constant" and warmup >= total:
        raise OptimError(
            f"optim: {warmup} warmup steps leave none of the {total} steps to decay over; "
            "lower optim.warmup_steps / optim.warmup_ratio."
        )
    if config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif config.schedule == "linear":
        main = optax.linear_schedule(lr, 0.0, total - warmup)
    else:
        main = optax.cosine_decay_schedule(lr, total - warmup)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
