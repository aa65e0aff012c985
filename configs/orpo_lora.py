"""LoRA ORPO (Hong et al. 2024): SFT on the chosen answer plus an odds-ratio penalty on the
rejected one, in one stage and without a reference model (it can start from a base model).

    jaxtune train --config=configs/orpo_lora.py --config.orpo.beta=0.1

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set (runs offline).
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "orpo"
    config.output_dir = "runs/orpo_lora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: rows with prompt / chosen / rejected.
    config.data.train = set_path("preference")
    config.data.eval = ""
    config.data.packing = False

    # ORPO: loss = chosen NLL - beta * log sigmoid(log odds ratio).
    config.orpo.beta = 0.1  # weight of the odds-ratio term (the paper: 0.1-0.25)

    # PEFT: LoRA on every linear layer.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

    # Optimizer: ORPO includes SFT, so an SFT-like learning rate.
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 10

    # Loop. batch_size counts pairs.
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100
    return config
