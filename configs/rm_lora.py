"""LoRA reward model: a scalar head on the last token, Bradley-Terry loss on preference pairs.

    jaxtune train --config=configs/rm_lora.py
    jaxtune train --config=configs/rm_lora.py --config.data.train=my_pairs.jsonl \
        --config.data.eval=my_heldout_pairs.jsonl --config.rm.center_rewards_coefficient=0.01

Defaults: the embedded SmolLM2-135M-Instruct on the shipped preference set (runs offline).
Rows are prompt / chosen / rejected (strings or message lists; see jaxtune/data).
Export: jaxtune export --checkpoint runs/rm_lora --out exported/rm   (*ForSequenceClassification)
Score:  jaxtune eval --checkpoint runs/rm_lora --config.data.eval=pairs.jsonl  (accuracy, margin)
Use:    jaxtune train --config=configs/ppo_lora.py --config.ppo.reward_model=exported/rm
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "rm"
    config.output_dir = "runs/rm_lora"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id. An
    # exported reward model (*ForSequenceClassification) continues with its own head.
    config.model.path = ""

    # Data: pairs; chosen and rejected of a pair go through the model in one batch.
    config.data.train = set_path("preference")
    config.data.eval = ""  # held-out pairs give eval_accuracy / eval_margin every eval_every
    config.data.packing = False  # one pair per row: the reward is read at its last token

    # Reward head: -log sigmoid(r_chosen - r_rejected) (+ c (r_chosen + r_rejected)^2).
    config.rm.center_rewards_coefficient = 0.0  # trl suggests 0.01 to keep rewards near 0

    # PEFT: LoRA on every linear layer; the head trains in full beside the adapters.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.peft.targets = "all-linear"

    # Optimizer.
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 5

    # Loop: batch_size counts pairs.
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.seq_len = 256
    config.train.log_every = 10
    config.train.save_every = 50
    return config
