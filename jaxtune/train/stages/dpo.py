"""Stage `dpo`: direct preference optimisation and its variants (jaxtune.losses.dpo).

    jaxtune train --config=configs/dpo_lora.py --config.dpo.beta=0.1 --config.dpo.loss_type=ipo

loss_type: sigmoid (DPO, Rafailov et al. 2023), ipo (length-averaged, as trl), hinge (SLiC),
robust (rDPO) and cdpo (conservative DPO), the latter two with `label_smoothing`. Chosen and
rejected go through the model as one [2B, T] batch. The reference (`dpo.reference`):
    auto      disable with LoRA / DoRA / adapters, else copy
    disable   the same params with the adapters off, inside the step: no second copy
    copy      a frozen copy of the step-0 trainable arrays; reference log-probs are computed
              per batch before the step and ride in the batch
    cache     reference log-probs computed once per pair and kept on disk (`dpo.ref_cache_dir`,
              default <output_dir>/ref_logps), reused on resume and by later runs of the same
              model and data (jaxtune.train.ref_cache)
Reported like trl: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from jaxtune.losses import dpo_loss
from jaxtune.losses.dpo import check_dpo_args
from jaxtune.train import ref_logps
from jaxtune.train.pair_logps import masked_terms, pair_logps
from jaxtune.train.stages import Batch, LossOutput, Params

CONFIG_SECTION = "dpo"
REF_DEFAULT = ref_logps.RefSettings()


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            beta=0.1,  # strength of the implicit KL to the reference; 0.01-0.5
            loss_type="sigmoid",  # sigmoid | ipo | hinge | robust | cdpo
            label_smoothing=0.0,  # robust / cdpo: assumed fraction of flipped labels
            **ref_logps.default_config(),
        )
    )


@dataclasses.dataclass(frozen=True)
class DPOStage(ref_logps.ReferenceHooks):
    """The DPO family on pairs (see the module docstring). Hashable: static in jit."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    reference: ref_logps.RefSettings = REF_DEFAULT
    loss_chunk: int = 0
    name: str = "dpo"

    def init_params(self, model: Any, params: Params, rng: jax.Array) -> Params:
        return params

    ref_keys = ("ref_chosen_logps", "ref_rejected_logps")
    unit_prefixes = ("chosen_", "rejected_")

    def reference_arrays(self, model: Any, params: Params, batch: Batch) -> dict[str, jax.Array]:
        """The reference's summed completion log-probs per pair, [B, T] each."""
        ref = pair_logps(model, params, batch, self.loss_chunk)
        arrays = {self.ref_keys[0]: ref.chosen, self.ref_keys[1]: ref.rejected}
        return jax.lax.stop_gradient(arrays)

    def loss(
        self, model: Any, params: Params, batch: Batch, rng: jax.Array, train: bool
    ) -> LossOutput:
        policy = pair_logps(model, params, batch, self.loss_chunk)
        ref = ref_logps.reference_arrays(self, model, params, batch)

        def one(c, r, rc, rr, lc, lr):
            return dpo_loss(
                c,
                r,
                rc,
                rr,
                beta=self.beta,
                loss_type=self.loss_type,
                label_smoothing=self.label_smoothing,
                chosen_lengths=lc,
                rejected_lengths=lr,
            )

        units = (policy.chosen, policy.rejected, *(ref[k] for k in self.ref_keys))
        lengths = (policy.chosen_len, policy.rejected_len)
        return masked_terms(one, policy.valid, *units, *lengths)


def make_stage(config: Any) -> DPOStage:
    c = config.dpo
    check_dpo_args(str(c.loss_type), float(c.beta), float(c.label_smoothing))
    return DPOStage(
        beta=float(c.beta),
        loss_type=str(c.loss_type),
        label_smoothing=float(c.label_smoothing),
        reference=ref_logps.RefSettings.from_config(config, "dpo"),
        loss_chunk=int(config.train.loss_chunk),
    )
