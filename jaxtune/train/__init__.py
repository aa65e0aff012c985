"""Training: one loop for every stage, orbax checkpoints with exact resume, metrics.

    from jaxtune.train import default_config, train
    config = default_config(); config.model.path = "..."; config.data.train = "..."
    result = train(config)

Pieces: config.py (keys and defaults), build.py (model, transforms, optimizer, data from the
config), state.py (TrainState), step.py (jitted step), stages/ (pt, sft, ...: the losses),
loop.py (the loop), checkpoint.py (orbax), metrics.py (console, jsonl, TensorBoard, wandb),
export.py (merged HF checkpoints and PEFT adapters from a run).
"""

from jaxtune.train.build import Run, build_run
from jaxtune.train.checkpoint import Checkpointer
from jaxtune.train.config import default_config
from jaxtune.train.loop import STEP_HOOKS, NonFiniteLoss, TrainResult, train
from jaxtune.train.stages import LossOutput, Stage, make_stage
from jaxtune.train.state import TrainState
from jaxtune.train.step import make_eval_step, make_train_step

__all__ = [
    "STEP_HOOKS",
    "Checkpointer",
    "LossOutput",
    "NonFiniteLoss",
    "Run",
    "Stage",
    "TrainResult",
    "TrainState",
    "build_run",
    "default_config",
    "make_eval_step",
    "make_stage",
    "make_train_step",
    "train",
]
