"""Houlsby adapters (2019): a small bottleneck MLP after attention and after the MLP of each layer,
near identity at the start; the base frozen.

    jaxtune train --config=configs/sft_adapter.py --config.peft.bottleneck=32

Adapters add layers that neither a merged Hugging Face checkpoint nor a PEFT LoRA file can hold:
keep the jaxtune checkpoint (jaxtune eval / generate read it).
"""

from jaxtune.data import set_path
from jaxtune.train.config import default_config


def get_config():
    config = default_config()
    config.stage = "sft"
    config.output_dir = "runs/sft_adapter"

    # Model: "" = the embedded SmolLM2-135M-Instruct; a directory, .gguf file or hub id.
    config.model.path = ""

    # Data: the assistant turns are learned, prompts are masked (data.train_on_prompt=False).
    config.data.train = set_path("instruct")
    config.data.eval = ""  # a held-out file gives eval_loss every train.eval_every steps
    config.data.packing = True  # several short examples per row: fewer wasted tokens

    # PEFT: x + up(act(down(x))) after o_proj (attention) and down_proj (MLP) of each layer.
    config.peft.method = "adapter"
    config.peft.targets = "all-linear"  # "all-linear" = the Houlsby places above
    config.peft.bottleneck = 64  # hidden width of each adapter

    # Optimizer: LoRA wants a higher learning rate than full fine-tuning.
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10

    # Loop.
    config.train.steps = 200
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 10
    config.train.save_every = 100  # checkpoints hold the adapters only
    return config
