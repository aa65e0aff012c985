"""GRPO with LoRA (Shao et al. 2024): k answers per prompt, rewarded by verifiable Python
functions; each answer's advantage is its reward relative to its group's (no value model), with
a KL term to the base (adapters off).

    jaxtune train --config=configs/grpo_lora.py
    jaxtune train --config=configs/grpo_lora.py --config.data.train=my_math.jsonl \
        --config.grpo.reward_fn=exact_match,my_rewards.length_penalty

Defaults: the embedded SmolLM2-135M-Instruct on the shipped arithmetic prompts, rewarded 1 for
the exact answer. One rollout = `train.batch_size` prompts x `grpo.num_generations` answers.
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "grpo"
    config.output_dir = "runs/grpo_lora"
    config.model.path = ""

    config.data.train = set_path("prompts")  # `prompt` + `answer`
    config.data.truncation = "truncate"
    config.train.seq_len = 128  # prompt length (longer prompts keep their end, counted)

    # Rewards: comma-separated built-ins (exact_match, format) or dotted paths, with weights.
    config.grpo.reward_fn = "exact_match"
    config.grpo.reward_weights = ""

    # Groups and the loss (trl's defaults): beta weighs the k3 KL to the reference.
    config.grpo.num_generations = 8
    config.grpo.max_new_tokens = 32
    config.grpo.temperature = 1.0
    config.grpo.beta = 0.04
    config.grpo.epsilon = 0.2
    config.grpo.loss_type = "grpo"  # grpo | bnpo | dr_grpo
    config.grpo.scale_rewards = "group"
    config.grpo.ppo_epochs = 1  # 1 and num_minibatches 1: on-policy, as trl by default
    config.grpo.num_minibatches = 1

    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0

    config.train.steps = 100
    config.train.batch_size = 4  # prompts per step: 4 x 8 = 32 answers
    config.train.log_every = 5
    config.train.save_every = 50
    return config
