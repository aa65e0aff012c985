"""QLoRA SFT (Dettmers et al. 2023): the frozen base stored as NF4 with double quantization
(~0.5 byte per parameter), fp32 LoRA adapters on top; only the adapters train.

    jaxtune train --config=configs/sft_qlora.py
    jaxtune export --checkpoint runs/sft_qlora --out merged/   # merged into the dequantized base
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_qlora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: the assistant turns are learned, prompts are masked (data.train_on_prompt=False).
    config.data.train = set_path("instruct")
    config.data.eval = ""  # a held-out file gives eval_loss every train.eval_every steps
    config.data.packing = True  # several short examples per row: fewer wasted tokens

    # PEFT: W x + (alpha / rank) B A x on every linear layer (PEFT's "all-linear").
    config.peft.method = "lora"
    config.peft.rank = 16  # capacity of the update; 8-64 is typical
    config.peft.alpha = 32.0  # the update's scale is alpha / rank: keep alpha ~ 2 x rank
    config.peft.dropout = 0.0  # 0.05-0.1 on small data sets
    config.peft.targets = "all-linear"  # or "q_proj,v_proj" (the original LoRA paper)

    # Quantization of the frozen base (the adapters stay fp32).
    config.quant.method = "nf4"  # nf4 | fp4 | int8
    config.quant.block_size = 64
    config.quant.double_quant = True  # 8-bit absmax constants in blocks of 256 (QLoRA)
    config.quant.targets = "all-linear"

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
