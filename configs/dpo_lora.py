"""LoRA DPO (Rafailov et al. 2023): prefer the chosen answer over the rejected one, relative to a
reference model that is the same weights with the adapters off (no second copy in memory).

    jaxtune train --config=configs/dpo_lora.py
    jaxtune train --config=configs/dpo_lora.py --config.model.path=runs/sft_lora/exported \
        --config.data.train=my_pairs.jsonl --config.dpo.loss_type=ipo

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set (runs offline). Data:
rows with `prompt` / `chosen` / `rejected` (strings or message lists). Start from an SFT model.
Export: jaxtune export --checkpoint runs/dpo_lora --out exported/ [--adapter]
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "dpo"
    config.output_dir = "runs/dpo_lora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: pairs; the loss counts the completions only (the prompt is masked).
    config.data.train = set_path("preference")
    config.data.eval = ""  # held-out pairs give eval_rewards/accuracies and margins
    config.data.packing = False  # True packs several pairs per row (segments stay apart)

    # DPO: the loss and its strength.
    config.dpo.beta = 0.1  # the implicit KL strength; lower drifts further from the reference
    config.dpo.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust | cdpo
    config.dpo.label_smoothing = 0.0  # robust / cdpo: expected fraction of flipped labels
    config.dpo.reference = "auto"  # LoRA: adapters off | copy | cache (log-probs on disk)

    # PEFT: W x + (alpha / rank) B A x on every linear layer (PEFT's "all-linear").
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

    # Optimizer: DPO wants a lower learning rate than SFT.
    config.optim.lr = 5e-5
    config.optim.warmup_steps = 10

    # Loop. batch_size counts pairs; each step runs 2 x batch_size sequences.
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100  # checkpoints hold the adapters only
    return config
