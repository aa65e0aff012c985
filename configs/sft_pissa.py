"""PiSSA (Meng et al. 2024): LoRA initialised with the principal singular components of each
weight, the rest frozen as the residual base; the model is unchanged at step 0 and training
starts on the directions that matter most.

    jaxtune train --config=configs/sft_pissa.py
    jaxtune export --checkpoint runs/sft_pissa --out adapter/ --adapter   # as a plain LoRA
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_pissa"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: the assistant turns are learned, prompts are masked (data.train_on_prompt=False).
    config.data.train = set_path("instruct")
    config.data.eval = ""  # a held-out file gives eval_loss every train.eval_every steps
    config.data.packing = True  # several short examples per row: fewer wasted tokens

    # PEFT: W x + (alpha / rank) B A x on every linear layer (PEFT's "all-linear").
    config.peft.method = "lora"
    config.peft.rank = 16  # capacity of the update; 8-64 is typical
    config.peft.alpha = 16.0  # PiSSA's usual alpha = rank (scale 1)
    config.peft.init = "pissa"  # A, B = the top-rank singular components of W
    config.peft.pissa_niter = 4  # randomized SVD with 4 power iterations; 0 = exact SVD
    config.peft.dropout = 0.0  # 0.05-0.1 on small data sets
    config.peft.targets = "all-linear"  # or "q_proj,v_proj" (the original LoRA paper)

    # Optimizer: LoRA wants a higher learning rate than full fine-tuning.
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 10

    # Loop.
    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100  # checkpoints hold the adapters only
    return config
