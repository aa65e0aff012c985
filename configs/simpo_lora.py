"""LoRA SimPO (Meng et al. 2024): a length-normalised reward with a target margin, no
reference model (half the forward passes of DPO).

    jaxtune train --config=configs/simpo_lora.py --config.simpo.gamma=1.0

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set (runs offline).
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "simpo"
    config.output_dir = "runs/simpo_lora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: rows with prompt / chosen / rejected.
    config.data.train = set_path("preference")
    config.data.eval = ""
    config.data.packing = False

    # SimPO: -log sigmoid(beta * (avg logp chosen - avg logp rejected) - gamma).
    config.simpo.beta = 2.0  # the paper: 2.0-2.5
    config.simpo.gamma = 0.5  # target margin (trl's simpo_gamma)
    config.simpo.sft_weight = 0.0  # > 0 adds the chosen NLL (CPO-SimPO)

    # PEFT: LoRA on every linear layer.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

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
