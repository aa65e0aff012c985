"""Stage `kto`: Kahneman-Tversky optimisation on unpaired completions (jaxtune.losses.kto).

    jaxtune train --config=configs/kto_lora.py --config.kto.desirable_weight=1.33

Each row is one completion with `kto_label` (1 desirable, 0 undesirable); a preference set gives
a desirable and an undesirable row per pair. The reference point z0 is KL(policy || reference)
estimated on the batch's mismatched rows (`kl_*`: prompt i with completion i-1), without
gradient. Weights: trl advises desirable_weight * n_desirable / (undesirable_weight *
n_undesirable) in [1, 4/3]. The reference model: `kto.reference`, as for DPO (adapters off,
a frozen copy, or log-probs cached on disk). Reported like trl: rewards/chosen (desirable),
rewards/rejected (undesirable), rewards/margins, logps/chosen, logps/rejected, kl.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtune.losses import kto_loss
from jaxtune.losses.errors import LossConfigError
from jaxtune.train import ref_logps
from jaxtune.train.pair_logps import LM_KEYS, masked_terms, sequence_totals, sequences
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "kto"
REF_DEFAULT = ref_logps.RefSettings()


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            beta=0.1,  # strength of the implicit KL to the reference
            desirable_weight=1.0,  # loss weight of desirable rows
            undesirable_weight=1.0,  # loss weight of undesirable rows
            **ref_logps.default_config(),
        )
    )


@dataclasses.dataclass(frozen=True)
class KTOStage(ref_logps.ReferenceHooks):
    """KTO on labelled rows (see the module docstring). Hashable: static in jit."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    reference: ref_logps.RefSettings = REF_DEFAULT
    loss_chunk: int = 0
    name: str = "kto"

    ref_keys = ("ref_logps", "ref_kl_logps")
    unit_prefixes = ("", "kl_")

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    def reference_arrays(self, model: Any, params: Params, batch: Batch) -> dict[str, jax.Array]:
        """The reference's summed completion log-probs of the rows and the KL rows, [B, T] each
        (one [2B, T] pass)."""
        cat = {k: jnp.concatenate([batch[k], batch["kl_" + k]]) for k in LM_KEYS}
        sums, _ = sequence_totals(model, params, cat, self.loss_chunk)
        rows, kl_rows = jnp.split(sums, 2)
        return jax.lax.stop_gradient({self.ref_keys[0]: rows, self.ref_keys[1]: kl_rows})

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        logps, lengths = sequence_totals(model, params, sequences(batch), self.loss_chunk)
        frozen = jax.lax.stop_gradient(params)  # the KL term has no gradient: no backward pass
        kl_logps, kl_lengths = sequence_totals(model, frozen, sequences(batch, "kl_"), 0)
        ref = ref_logps.reference_arrays(self, model, params, batch)
        kl = reference_point(kl_logps, ref[self.ref_keys[1]], kl_lengths > 0)
        valid = lengths > 0
        labels = jnp.broadcast_to(batch["kto_label"][:, None], valid.shape)

        def one(policy, reference, label):
            return kto_loss(
                policy,
                reference,
                label,
                kl,
                beta=self.beta,
                desirable_weight=self.desirable_weight,
                undesirable_weight=self.undesirable_weight,
            )

        out = masked_terms(one, valid, logps, ref[self.ref_keys[0]], labels)
        return out._replace(metrics=batch_margin(out.metrics))


def reference_point(policy: jax.Array, ref: jax.Array, valid: jax.Array) -> jax.Array:
    """KTO's z0 over the valid KL units: max(0, mean(policy - ref)), no gradient (kto_kl)."""
    w = valid.astype(jnp.float32)
    mean = jnp.sum((policy - ref) * w) / jnp.maximum(jnp.sum(w), 1.0)
    return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


def batch_margin(metrics: dict) -> dict:
    """rewards/margins of the whole batch (mean desirable - mean undesirable reward, when the
    batch has both), as kto_loss reports it; per-unit terms cannot hold it."""
    (cs, cn), (rs, rn) = metrics["rewards/chosen"], metrics["rewards/rejected"]
    both = (cn > 0) & (rn > 0)
    margin = cs / jnp.maximum(cn, 1.0) - rs / jnp.maximum(rn, 1.0)
    return {**metrics, "rewards/margins": (jnp.where(both, margin, 0.0), both.astype(jnp.float32))}


def make_stage(config: Any) -> KTOStage:
    c = config.kto
    stage = KTOStage(
        beta=float(c.beta),
        desirable_weight=float(c.desirable_weight),
        undesirable_weight=float(c.undesirable_weight),
        reference=ref_logps.RefSettings.from_config(config, "kto"),
        loss_chunk=int(config.train.loss_chunk),
    )
    if stage.beta <= 0 or stage.desirable_weight < 0 or stage.undesirable_weight < 0:
        raise LossConfigError(
            f"config.kto: beta must be > 0 (got {stage.beta}) and the weights >= 0 (got "
            f"{stage.desirable_weight}, {stage.undesirable_weight})."
        )
    return stage
