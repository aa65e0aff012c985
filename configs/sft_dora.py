"""DoRA SFT (Liu et al. 2024): LoRA on the direction of each weight plus a trained magnitude per
output feature. Slightly slower than LoRA, often better at low rank.

    jaxtune train --config=configs/sft_dora.py
    jaxtune export --checkpoint runs/sft_dora --out exported/ [--adapter]
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_dora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: the assistant turns are learned, prompts are masked (data.train_on_prompt=False).
    config.data.train = set_path("instruct")
    config.data.eval = ""  # a held-out file gives eval_loss every train.eval_every steps
    config.data.packing = True  # several short examples per row: fewer wasted tokens

    # PEFT: m * (W + s B A) / ||W + s B A||_col on every linear layer; m trains too.
    config.peft.method = "dora"
    config.peft.rank = 8  # DoRA is strong at low rank
    config.peft.alpha = 16.0  # s = alpha / rank
    config.peft.dropout = 0.0  # 0.05-0.1 on small data sets
    config.peft.targets = "all-linear"  # or "q_proj,v_proj" (the original LoRA paper)

    # Optimizer: LoRA wants a higher learning rate than full fine-tuning.
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 10

    # Loop.
    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100  # checkpoints hold the adapters only
    return config
