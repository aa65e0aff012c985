"""BAdam (Luo et al. 2024): block coordinate descent; one block of layers is updated with Adam
for a number of steps, then the next; optimizer state exists only for the active block.

    jaxtune train --config=configs/sft_badam.py
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_badam"
    config.model.path = ""
    config.data.train = set_path("instruct")
    config.data.packing = True

    config.peft.method = "none"
    config.optim.name = "badam"  # block order / switch interval: see the optim section
    config.optim.lr = 1e-5
    config.optim.warmup_steps = 10

    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.save_every = 100
    return config
