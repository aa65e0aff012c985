"""The DPO/PPO reference model with PEFT: the base with adapters disabled, no second copy.

Its completion log-probs must equal the base model's exactly (bit for bit), while the adapted
policy's differ; chosen and rejected go through the model as one concatenated batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import models, peft
from jaxtune.losses.dpo import dpo_loss
from jaxtune.losses.logprobs import concat_pairs, sequence_logps, split_pairs
from tests.losses_support import preference_batch


def test_disabled_adapters_give_the_base_log_probs_exactly(tiny_checkpoint):
    model, base = models.load(tiny_checkpoint("llama"))
    adapted = peft.lora(base, "all-linear", rank=4, rng=jax.random.key(0))

    def nonzero_b(path, leaf):  # B = 0 at init would make the test trivially true
        if isinstance(leaf, peft.LoraWeight):
            noise = 0.05 * jax.random.normal(jax.random.key(len(str(path))), leaf.lora_b.shape)
            return dataclasses.replace(leaf, lora_b=noise)
        return leaf

    adapted = jax.tree_util.tree_map_with_path(
        nonzero_b, adapted, is_leaf=lambda x: isinstance(x, peft.LoraWeight)
    )
    cat = concat_pairs(jax.tree.map(jnp.asarray, preference_batch()))

    @jax.jit
    def logps(params):
        seg = cat["segment_ids"]
        logits = model.apply(
            params,
            cat["input_ids"],
            positions=cat["positions"],
            segment_ids=seg,
            attention_mask=seg > 0,
        )
        return sequence_logps(logits, cat["targets"], cat["loss_mask"])

    base_logps = np.asarray(logps(base))
    ref_logps = np.asarray(logps(peft.disable(adapted)))
    policy_logps = np.asarray(logps(adapted))
    np.testing.assert_array_equal(ref_logps, base_logps)
    assert np.abs(policy_logps - base_logps).max() > 1e-3

    out = dpo_loss(*split_pairs(jnp.asarray(policy_logps)), *split_pairs(jnp.asarray(ref_logps)))
    same = dpo_loss(*split_pairs(jnp.asarray(ref_logps)), *split_pairs(jnp.asarray(ref_logps)))
    np.testing.assert_allclose(float(same.loss), np.log(2.0), rtol=1e-6)  # policy == reference
    assert float(out.loss) != float(same.loss)
