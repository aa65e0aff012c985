"""A rollout's rows as train batches: `epochs` shuffled passes of `num_minibatches` each."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxtune.errors import UserError


def epochs(
    arrays: dict[str, np.ndarray],
    *,
    epochs: int,
    num_minibatches: int,
    rng: np.random.Generator,
    where: str = "ppo",
) -> Iterator[dict[str, np.ndarray]]:
    """Yield epochs x num_minibatches batches; each pass visits every row once (shuffled)."""
    rows = len(next(iter(arrays.values())))
    if rows % num_minibatches:
        raise UserError(
            f"config.{where}.num_minibatches={num_minibatches} does not divide the {rows} rows "
            "of a rollout (train.batch_size prompts x samples per prompt); make it a divisor."
        )
    size = rows // num_minibatches
    for _ in range(epochs):
        order = rng.permutation(rows) if num_minibatches > 1 else np.arange(rows)
        for i in range(num_minibatches):
            idx = np.sort(order[i * size : (i + 1) * size])
            yield {k: v[idx] for k, v in arrays.items()}
