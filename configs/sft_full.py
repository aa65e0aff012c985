"""Full fine-tuning SFT: every weight trains (fp32 master weights, AdamW).

    jaxtune train --config=configs/sft_full.py
    jaxtune train --config=configs/sft_full.py --config.model.compute_dtype=bfloat16

Needs ~16 bytes per parameter for weights, gradients and Adam moments (fp32): use LoRA or
freeze-tuning when memory is short.
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_full"
    config.model.path = ""  # "" = the embedded SmolLM2-135M-Instruct
    config.data.train = set_path("instruct")
    config.data.packing = True

    config.peft.method = "none"

    # Full fine-tuning moves every weight: a small learning rate keeps the model's knowledge.
    config.optim.lr = 1e-5
    config.optim.warmup_steps = 10
    config.optim.weight_decay = 0.0

    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.remat = "dots"  # keep matmul outputs, recompute the rest; "full" = least memory
    config.train.save_every = 100
    return config
