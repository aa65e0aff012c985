"""PPO with LoRA (RLHF, the third step of the InstructGPT pipeline): the policy samples answers
to prompts, a reward scores them, and PPO moves the adapters towards higher reward while a KL
penalty keeps it near the base (the reference = the base with adapters off: no second copy).

    jaxtune train --config=configs/ppo_lora.py                      # verifiable reward, offline
    jaxtune train --config=configs/ppo_lora.py --config.ppo.reward_fn= \
        --config.ppo.reward_model=runs/rm/exported                  # a trained reward model

Defaults: the embedded SmolLM2-135M-Instruct on the shipped arithmetic prompts, rewarded 1 for
the exact answer (`exact_match`). `train.steps` counts minibatch steps; one rollout is
`train.batch_size` prompts, trained on for ppo_epochs x num_minibatches steps.
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "ppo"
    config.output_dir = "runs/ppo_lora"
    config.model.path = ""  # the SFT model (merged export) in the InstructGPT pipeline

    # Prompts: `prompt` (+ `answer` for verifiable rewards). train.seq_len is the prompt
    # length; longer prompts keep their end (the assistant turn) and are counted.
    config.data.train = set_path("prompts")
    config.data.truncation = "truncate"
    config.train.seq_len = 128

    # Reward: Python functions (built-ins exact_match, format, or a dotted path) and/or a
    # reward model directory (same tokenizer as the policy); their scores add up.
    config.ppo.reward_fn = "exact_match"
    config.ppo.reward_model = ""
    config.ppo.missing_eos_penalty = 1.0  # answers that never end lose 1

    # Rollouts: sampled at temperature 1 (the log-probs of the ratio use the same one).
    config.ppo.max_new_tokens = 32
    config.ppo.temperature = 1.0

    # PPO: InstructGPT/trl defaults; kl_target > 0 makes the KL coefficient adaptive.
    config.ppo.ppo_epochs = 2
    config.ppo.num_minibatches = 2
    config.ppo.kl_coef = 0.05
    config.ppo.cliprange = 0.2
    config.ppo.vf_coef = 0.1
    config.ppo.gamma = 1.0
    config.ppo.lam = 0.95

    # PEFT: LoRA on every linear layer; the value head trains beside it.
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.optim.lr = 1e-4  # LoRA: ~10x a full fine-tuning rate
    config.optim.warmup_steps = 0

    config.train.steps = 200  # = 50 rollouts of 8 prompts
    config.train.batch_size = 8
    config.train.log_every = 4
    config.train.save_every = 100
    return config
