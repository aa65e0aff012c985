"""Optimizers by parameter label, as optax transformations.

    from jaxtune import optim, peft
    config = optim.default_config()            # the `optim` section of a run config
    config.name = "adamw"; config.lr = 2e-4; config.loraplus_ratio = 16
    trainable, frozen = peft.split_trainable(params)
    tx = optim.build(config, trainable, total_steps=1000)   # labels from peft.param_labels
    opt_state = tx.init(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

Pieces, one per file: labels (role and kind of each array), build (optax.multi_transform over
groups), loraplus (learning rate per array), galore (low-rank projected Adam), badam (block
coordinate Adam), subset (state for the trained layers of a stacked leaf only), schedules
(warmup + cosine/linear/constant), accumulate (optax.MultiSteps), precision (fp32 master + bf16
compute, or pure bf16), size (bytes of a state tree), config (keys and defaults).
"""

from jaxtune.optim.accumulate import accumulate
from jaxtune.optim.badam import BadamState, Blocks, active_block, badam
from jaxtune.optim.build import Group, assign, build, plan
from jaxtune.optim.config import check_config, default_config
from jaxtune.optim.errors import OptimError
from jaxtune.optim.galore import GaloreState, fit_projector, galore, project, project_back
from jaxtune.optim.labels import ROLES, LeafInfo, describe
from jaxtune.optim.precision import cast_params, fp32_math, model_dtypes, state_dtype
from jaxtune.optim.schedules import schedule
from jaxtune.optim.size import state_bytes, tree_bytes
from jaxtune.optim.subset import layer_subset

__all__ = [
    "ROLES",
    "BadamState",
    "Blocks",
    "GaloreState",
    "Group",
    "LeafInfo",
    "OptimError",
    "accumulate",
    "active_block",
    "assign",
    "badam",
    "build",
    "cast_params",
    "check_config",
    "default_config",
    "describe",
    "fit_projector",
    "fp32_math",
    "galore",
    "layer_subset",
    "model_dtypes",
    "plan",
    "project",
    "project_back",
    "schedule",
    "state_bytes",
    "state_dtype",
    "tree_bytes",
]
