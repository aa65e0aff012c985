"""Freeze-tuning SFT (LlamaFactory's `finetuning_type: freeze`): only the last N decoder layers
train, everything else is frozen.

    jaxtune train --config=configs/sft_freeze.py --config.peft.trainable_layers=4
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_freeze"
    config.model.path = ""
    config.data.train = set_path("instruct")
    config.data.packing = True

    config.peft.method = "freeze"
    config.peft.trainable_layers = 2  # the last 2 layers (negative: the first |N|)
    config.peft.trainable_modules = "all"  # or "mlp", "self_attn", "q_proj,v_proj"
    config.peft.extra_modules = ""  # e.g. "norm" or "embed_tokens" train whole as well

    config.optim.lr = 5e-5
    config.optim.warmup_steps = 10

    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.save_every = 100
    return config
