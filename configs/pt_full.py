"""(Continued) pretraining: causal LM on plain text, every token counted, full fine-tuning.

    jaxtune train --config=configs/pt_full.py --config.data.train=corpus.jsonl

Rows of {"text": ...}; long documents are split into train.seq_len pieces and packed.
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "pt"
    config.output_dir = "runs/pt_full"
    config.model.path = ""  # "" = the embedded SmolLM2-135M-Instruct

    config.data.train = set_path("text")
    config.data.format = "text"
    config.data.packing = True  # no padding: documents fill rows end to end

    config.peft.method = "none"
    config.optim.lr = 2e-5
    config.optim.warmup_steps = 20

    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.remat = "dots"  # keep matmul outputs, recompute the rest; "full" = least memory
    config.train.save_every = 100
    return config
