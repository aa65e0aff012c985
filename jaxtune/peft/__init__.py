"""Parameter-efficient fine-tuning as pure transforms over a params pytree.

    params = peft.lora(params, targets=["q_proj", "v_proj"], rank=8, alpha=16, rng=key)
    logits = model.apply(params, ids)          # jaxtune models: fast path, W + BA never formed
    trainable, rest = peft.split_trainable(params)
    grads = jax.grad(lambda t: loss(model.apply(peft.combine(t, rest), ids)))(trainable)
    peft.save_adapter("out/", model, params)   # PEFT's adapter_config.json + safetensors

The tree before and after `lora` (every stacked leaf keeps its leading layer axis L):

    layers/self_attn/q_proj/kernel  (L, D, D)
        -> LoraWeight(base (L, D, D), lora_a (L, D, r), lora_b (L, r, D), scale)

Transforms: `lora`, `dora`, `adapter` (Houlsby), `pissa`, `freeze`. Targets: a regex on the
'/'-joined path, module names, a predicate or "all-linear" (see `select`). Adapter leaves follow
the weight-leaf protocol of `jaxtune.models.layers` (`linear`, `materialize`) and take any weight
as their base, quantized ones included. Other models: `peft.wrap(apply_fn)`.
"""

from jaxtune.peft.adapter import AdapterWeight, adapter
from jaxtune.peft.dora import DoraWeight, dora
from jaxtune.peft.errors import AdapterFileError, MergeError, RankError, TargetError
from jaxtune.peft.freeze import FreezeParams, freeze
from jaxtune.peft.hf_io import load_adapter, save_adapter
from jaxtune.peft.lora import LoraWeight, lora
from jaxtune.peft.pissa import pissa, pissa_to_lora
from jaxtune.peft.select import ALL_LINEAR, select
from jaxtune.peft.tree import (
    combine,
    count_parameters,
    disable,
    layer_trainable_mask,
    merge,
    param_labels,
    print_trainable_parameters,
    split_trainable,
    stop_frozen,
    trainable_mask,
    unmerge,
    with_dropout_rng,
    zero_frozen_layers,
)
from jaxtune.peft.weight import AdapterLeaf
from jaxtune.peft.wrap import materialize_params, wrap

__all__ = [
    "ALL_LINEAR",
    "AdapterFileError",
    "AdapterLeaf",
    "AdapterWeight",
    "DoraWeight",
    "FreezeParams",
    "LoraWeight",
    "MergeError",
    "RankError",
    "TargetError",
    "adapter",
    "combine",
    "count_parameters",
    "disable",
    "dora",
    "freeze",
    "layer_trainable_mask",
    "load_adapter",
    "lora",
    "materialize_params",
    "merge",
    "param_labels",
    "pissa",
    "pissa_to_lora",
    "print_trainable_parameters",
    "save_adapter",
    "select",
    "split_trainable",
    "stop_frozen",
    "trainable_mask",
    "unmerge",
    "with_dropout_rng",
    "wrap",
    "zero_frozen_layers",
]
