"""LoRA KTO (Ethayarajh et al. 2024): learn from completions labelled good or bad, no pairs
needed; the reference is the same weights with the adapters off.

    jaxtune train --config=configs/kto_lora.py
    jaxtune train --config=configs/kto_lora.py --config.data.train=my_labels.jsonl

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set, each pair read as a
desirable and an undesirable row. Own data: rows with `prompt`, `completion`, `label` (bool).
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "kto"
    config.output_dir = "runs/kto_lora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: labelled completions (or pairs, split into one good and one bad row each).
    config.data.train = set_path("preference")
    config.data.eval = ""

    # KTO: weights of the two kinds of rows. trl advises
    # desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3].
    config.kto.beta = 0.1
    config.kto.desirable_weight = 1.0
    config.kto.undesirable_weight = 1.0
    config.kto.reference = "auto"  # LoRA: adapters off | copy | cache

    # PEFT: LoRA on every linear layer.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

    # Optimizer.
    config.optim.lr = 5e-5
    config.optim.warmup_steps = 10

    # Loop. batch_size counts rows (each with its KL row).
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100
    return config
