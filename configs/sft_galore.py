"""GaLore (Zhao et al. 2024): full-parameter training with Adam run on low-rank projections of
the gradients of 2-D weights, so optimizer state is r x n instead of m x n.

    jaxtune train --config=configs/sft_galore.py
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_galore"
    config.model.path = ""
    config.data.train = set_path("instruct")
    config.data.packing = True

    config.peft.method = "none"  # every weight trains
    config.optim.name = "galore"  # rank / update interval / scale: see the optim section
    config.optim.lr = 1e-5
    config.optim.warmup_steps = 10

    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.save_every = 100
    return config
