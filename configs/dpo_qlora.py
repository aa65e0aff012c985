"""QLoRA DPO: DPO with the frozen base stored as NF4 (~0.5 byte per parameter) and fp32 LoRA
adapters; the reference is the quantized base with the adapters off (no second copy).

    jaxtune train --config=configs/dpo_qlora.py
    jaxtune export --checkpoint runs/dpo_qlora --out merged/   # merged into the dequantized base

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set (runs offline).
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "dpo"
    config.output_dir = "runs/dpo_qlora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: rows with prompt / chosen / rejected.
    config.data.train = set_path("preference")
    config.data.eval = ""
    config.data.packing = False

    # DPO.
    config.dpo.beta = 0.1
    config.dpo.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust | cdpo
    config.dpo.reference = "auto"  # adapters off: the NF4 base is the reference

    # PEFT: LoRA on every linear layer.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

    # Quantization of the frozen base (the adapters stay fp32).
    config.quant.method = "nf4"  # nf4 | fp4 | int8
    config.quant.block_size = 64
    config.quant.double_quant = True
    config.quant.targets = "all-linear"

    # Optimizer.
    config.optim.lr = 5e-5
    config.optim.warmup_steps = 10

    # Loop. batch_size counts pairs.
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100
    return config
