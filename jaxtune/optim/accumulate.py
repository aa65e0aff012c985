"""Gradient accumulation inside the optimizer: k micro-batches, one update (optax.MultiSteps).

    tx = accumulate(tx, k)                 # updates are zero on k-1 of every k calls

`mean=True` averages the k gradients (each the gradient of its micro-batch's mean loss): one
k-times-larger batch exactly when every micro-batch counts the same number of tokens.
`mean=False` sums them: pass the gradient of each micro-batch's loss *sum* divided by the number
of counted tokens of all k micro-batches, and the sum is the gradient of the large batch's mean
token loss whatever the split (what transformers' `num_items_in_batch` fixes).

jaxtune's train loop does not use this: it accumulates inside its jitted step with a scan over
micro-batches and divides the summed gradient by the total token count (`train.grad_accum`), which
needs no accumulator in the optimizer state. This wrapper is for optax users of `optim.build` and
for `optim.grad_accum_steps`.
"""

from __future__ import annotations

import optax


def accumulate(
    tx: optax.GradientTransformation, every_k: int, mean: bool = True
) -> optax.GradientTransformation:
    """`tx` applied once every `every_k` calls to the accumulated gradients (fp32 accumulator)."""
    if every_k <= 1:
        return tx
    return optax.MultiSteps(tx, every_k, use_grad_mean=mean).gradient_transformation()
