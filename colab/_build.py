"""Writes the colab/*.ipynb notebooks from the cell sources below (edit here, then rebuild).

    .venv/bin/python colab/_build.py            # rewrites every notebook
    .venv/bin/python colab/_build.py --check    # exit 1 if a notebook differs from this file

Each notebook is a list of cells: ("md", text) or ("code", source). Outputs are not stored (the
test suite executes every notebook; Colab shows outputs when you run it). Conventions of every
notebook: a first code cell with the install hint for Colab; a settings cell with `MODEL` (the
one line to change: a hub id, a local checkpoint or "" for the embedded SmolLM2-135M-Instruct)
and the size of the run, read from environment variables the tests set
(JAXTUNE_NOTEBOOK_MODEL, JAXTUNE_NOTEBOOK_STEPS); curves plotted inline; a last cell that asserts
what the notebook claims.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
Cell = tuple[str, str]

INSTALL = """\
# On Colab (or any fresh machine) install jaxtune first, then restart the runtime if asked:
# !pip install -q "jaxtune @ git+https://github.com/<you>/jaxtune"   # or: !pip install -q jaxtune
# GPU runtime: !pip install -q -U "jax[cuda12]"     TPU runtime: !pip install -q -U "jax[tpu]"
"""


def settings(default_steps: int, note: str, output_dir: str = "") -> str:
    """The settings cell: MODEL, STEPS (the tests shrink both) and a fresh OUTPUT_DIR."""
    fresh = (
        f'OUTPUT_DIR = "{output_dir}"\n'
        "shutil.rmtree(OUTPUT_DIR, ignore_errors=True)  # a fresh run each time\n"
        if output_dir
        else ""
    )
    imports = "import os\nimport shutil\n" if output_dir else "import os\n"
    return f'''\
{imports}
import jax

# The one line to change: a Hugging Face hub id (e.g. "Qwen/Qwen2.5-0.5B-Instruct",
# "HuggingFaceTB/SmolLM2-360M-Instruct"), a local checkpoint directory or a .gguf file.
# "" = the embedded SmolLM2-135M-Instruct (offline, fine on a CPU).
MODEL = os.environ.get("JAXTUNE_NOTEBOOK_MODEL", "")
STEPS = int(os.environ.get("JAXTUNE_NOTEBOOK_STEPS", "{default_steps}"))  # {note}
{fresh}print("devices:", jax.devices())
'''


# ----------------------------------------------------------------------------- 01 LoRA SFT
LORA_SFT: list[Cell] = [
    (
        "md",
        """\
# LoRA SFT on one accelerator

Teach a chat model to answer like a pirate with LoRA (rank 16 on every linear layer), using the
same `jaxtune.train.train` that `jaxtune train --config=configs/sft_lora.py` runs:

1. load the model and add LoRA leaves to its params;
2. ask it a few held-out questions;
3. train on the shipped `demo_pirate` set (80 chats) and plot the loss curve;
4. ask again, export a merged Hugging Face checkpoint and load it in transformers.

On 2 CPU cores with the embedded SmolLM2-135M-Instruct this takes about two minutes; on a Colab
GPU or TPU, set `MODEL` to a hub id.""",
    ),
    ("code", INSTALL),
    ("code", settings(30, "~1.5 min on 2 CPU cores", "runs/colab_lora_sft")),
    (
        "md",
        """\
## The run's config

Every key of `jaxtune train`'s config is here (`default_config()`); a recipe changes a few.
`data.packing` puts several short chats in one row (segment ids keep them apart) and only the
assistant's tokens are learned.""",
    ),
    (
        "code",
        """\
from jaxtune.data import set_path
from jaxtune.train import default_config

config = default_config()
config.stage = "sft"
config.output_dir = OUTPUT_DIR
config.model.path = MODEL
config.data.train = set_path("demo_pirate")  # {"messages": [{"role": "user", ...}, ...]}
config.data.eval = set_path("demo_pirate_eval")  # 14 held-out chats in the same style
config.data.packing = True
config.peft.method = "lora"
config.peft.rank = 16
config.peft.alpha = 32.0  # the update is scaled by alpha / rank
config.peft.targets = "all-linear"
config.optim.lr = 2e-3
config.optim.warmup_steps = 4
config.train.steps = STEPS
config.train.batch_size = 4
config.train.seq_len = 128
config.train.log_every = 1
config.train.eval_at_start = True  # held-out loss before the first step ...
config.train.eval_every = max(STEPS // 3, 1)  # ... and along the way""",
    ),
    (
        "md",
        """\
## Before training

`build_run` loads the model, adds the LoRA leaves (B = 0, so the model is unchanged) and splits
the params into the trainable adapters and the frozen base.""",
    ),
    (
        "code",
        """\
import json
from pathlib import Path

from jaxtune.generate import generate_text
from jaxtune.train import build_run

run = build_run(config)
rows = Path(set_path("demo_pirate_eval")).read_text().splitlines()
QUESTIONS = [json.loads(row)["messages"][0]["content"] for row in rows[:3]]


def answer(params):
    return generate_text(run.model, params, run.tokenizer, QUESTIONS, max_new_tokens=32)


before = answer(run.combine(run.trainable, run.frozen))
for q, a in zip(QUESTIONS, before, strict=True):
    print(f"Q: {q}\\nA: {a}\\n")""",
    ),
    ("md", "## Train\n\nThe loop logs every step to `metrics.jsonl` (and TensorBoard)."),
    (
        "code",
        """\
from jaxtune import notebook
from jaxtune.train import train

result = train(config, run=run)
params = run.combine(result.state.params, run.frozen)
notebook.plot_metrics(OUTPUT_DIR, ["loss", "eval_loss"], title="LoRA SFT")""",
    ),
    ("md", "## After training: the same questions"),
    (
        "code",
        """\
after = answer(params)
for q, b, a in zip(QUESTIONS, before, after, strict=True):
    print(f"Q: {q}\\n  before: {b}\\n  after:  {a}\\n")""",
    ),
    (
        "md",
        """\
## Export a merged Hugging Face checkpoint

`export_merged` folds the adapters into the base weights and writes `config.json`,
`model.safetensors` and the tokenizer: a plain checkpoint that transformers (or vLLM, or
`jaxtune generate --model ...`) loads. `jaxtune export --checkpoint OUTPUT_DIR --out DIR` does
the same from the command line; add `--adapter` for a PEFT adapter instead.""",
    ),
    (
        "code",
        """\
import importlib.util

import jax.numpy as jnp
import numpy as np

from jaxtune.train.export import export_merged

merged_dir = export_merged(run, params, f"{OUTPUT_DIR}/merged")
print(sorted(p.name for p in Path(merged_dir).iterdir()))

ids = run.tokenizer("Ahoy, what is the sea?")["input_ids"]
ours = np.asarray(run.model.apply(params, jnp.asarray([ids])))
if importlib.util.find_spec("torch"):  # transformers needs torch to run the model
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    print(f"transformers vs jaxtune, max |logit diff|: {np.abs(theirs - ours).max():.1e}")
    assert np.abs(theirs - ours).max() < 1e-3""",
    ),
    ("md", "## What this notebook claims: the held-out loss went down"),
    (
        "code",
        """\
loss_before = result.evals[0]["eval_loss"]
loss_after = result.evals[STEPS]["eval_loss"]
print(f"held-out loss {loss_before:.3f} -> {loss_after:.3f}")
assert loss_after < loss_before - 0.3, (loss_before, loss_after)""",
    ),
]

# ----------------------------------------------------------------------------- 02 QLoRA
QLORA: list[Cell] = [
    (
        "md",
        """\
# QLoRA: LoRA over a 4-bit base

QLoRA (Dettmers et al. 2023) stores the frozen base weights as NF4 (4-bit NormalFloat, blocks
of 64 values with their own scale, the scales themselves quantized to 8 bits) and trains fp32
LoRA adapters on top. The base takes about 0.52 bytes per parameter instead of 4 (fp32) or 2
(bf16), which is what lets a 7B model fine-tune on one 16 GB GPU. In jaxtune a quantized
weight is just another param leaf: the matmul dequantizes a block at a time, and LoRA wraps it
like any other weight.

This is `configs/sft_qlora.py` in a notebook: same data and loop as `01_lora_sft`, plus
`config.quant`.""",
    ),
    ("code", INSTALL),
    ("code", settings(30, "~2 min on 2 CPU cores", "runs/colab_qlora")),
    (
        "code",
        """\
from jaxtune.data import set_path
from jaxtune.train import default_config

config = default_config()
config.stage = "sft"
config.output_dir = OUTPUT_DIR
config.model.path = MODEL
config.data.train = set_path("demo_pirate")
config.data.eval = set_path("demo_pirate_eval")
config.data.packing = True
config.quant.method = "nf4"  # nf4 | fp4 | int8: the frozen base
config.quant.block_size = 64  # values per absmax scale (along each weight's input axis)
config.quant.double_quant = True  # the scales as 8-bit codes in blocks of 256
config.quant.targets = "all-linear"  # embeddings, norms and the LM head stay as loaded
config.peft.method = "lora"
config.peft.rank = 16
config.peft.alpha = 32.0
config.optim.lr = 2e-3
config.optim.warmup_steps = 4
config.train.steps = STEPS
config.train.batch_size = 4
config.train.seq_len = 128
config.train.log_every = 1
config.train.eval_at_start = True
config.train.eval_every = max(STEPS // 3, 1)""",
    ),
    (
        "md",
        """\
## Memory of the params

`QuantizedWeight` leaves hold the packed 4-bit codes (two per byte) and the scales; the LoRA
leaves around them hold fp32 `A` and `B`. Counting bytes of the actual arrays:""",
    ),
    (
        "code",
        """\
import numpy as np

from jaxtune import notebook, quant
from jaxtune.optim.size import state_bytes
from jaxtune.train import build_run

run = build_run(config)
params = run.combine(run.trainable, run.frozen)
leaves = jax.tree.leaves(params, is_leaf=quant.is_quantized)
quantized = [w for w in leaves if quant.is_quantized(w)]
nf4_bytes = sum(w.nbytes for w in quantized)
fp32_bytes = sum(int(np.prod(w.shape)) * 4 for w in quantized)
n_weights = sum(int(np.prod(w.shape)) for w in quantized)
print(f"quantized weights: {n_weights:,} parameters")
print(f"  as fp32: {notebook.format_bytes(fp32_bytes)}")
print(f"  as NF4:  {notebook.format_bytes(nf4_bytes)} ({nf4_bytes / n_weights:.3f} bytes/param)")
print(f"everything stored: {notebook.format_bytes(notebook.tree_bytes(params))}")
print(f"LoRA adapters:     {notebook.format_bytes(notebook.tree_bytes(run.trainable))}")
print(f"Adam state:        {notebook.format_bytes(state_bytes(run.optimizer, run.trainable))}")""",
    ),
    ("md", "## Train (only the adapters get gradients and optimizer state)"),
    (
        "code",
        """\
from jaxtune.train import train

result = train(config, run=run)
params = run.combine(result.state.params, run.frozen)
notebook.plot_metrics(OUTPUT_DIR, ["loss", "eval_loss"], title="QLoRA SFT")""",
    ),
    (
        "md",
        """\
## Export

A merged export dequantizes the base and folds the adapters in: a plain Hugging Face
checkpoint (`jaxtune export --checkpoint OUTPUT_DIR --out DIR`). Reloaded, it gives the logits
of the QLoRA model up to float rounding.""",
    ),
    (
        "code",
        """\
import jax.numpy as jnp

from jaxtune import models
from jaxtune.train.export import export_merged

merged_dir = export_merged(run, params, f"{OUTPUT_DIR}/merged")
model, merged = models.load(merged_dir)
ids = jnp.asarray([run.tokenizer("Ahoy, what is the sea?")["input_ids"]])
diff = float(jnp.abs(model.apply(merged, ids) - run.model.apply(params, ids)).max())
print(f"merged export vs QLoRA params, max |logit diff|: {diff:.1e}")""",
    ),
    ("md", "## What this notebook claims: 4-bit base, and the held-out loss went down"),
    (
        "code",
        """\
loss_before = result.evals[0]["eval_loss"]
loss_after = result.evals[STEPS]["eval_loss"]
print(f"held-out loss {loss_before:.3f} -> {loss_after:.3f}")
print(f"NF4 base: {nf4_bytes / fp32_bytes:.3f} of fp32")
assert nf4_bytes < 0.14 * fp32_bytes  # 0.5 byte + scales per parameter, vs 4 bytes
assert diff < 1e-3
assert loss_after < loss_before - 0.3, (loss_before, loss_after)""",
    ),
]

# ----------------------------------------------------------------------------- 03 DPO
DPO: list[Cell] = [
    (
        "md",
        """\
# DPO: learn from preference pairs

Direct preference optimisation (Rafailov et al. 2023) trains the policy on pairs
(prompt, chosen, rejected) with the loss `-log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) −
log π_ref(r))])`: no reward model, no sampling. With LoRA the reference model is the same
params with the adapters switched off, so there is no second copy of the model.

The shipped `preference` set pairs a helpful answer (chosen) with a curt refusal such as
"I don't know." (rejected). We hold out 12 of its 60 pairs and watch the implicit reward
margin `β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]` and the preference accuracy
(chosen scored above rejected) on them.""",
    ),
    ("code", INSTALL),
    ("code", settings(40, "~2 min on 2 CPU cores", "runs/colab_dpo")),
    (
        "code",
        """\
from pathlib import Path

from jaxtune.data import set_path

rows = Path(set_path("preference")).read_text().splitlines()  # {"prompt", "chosen", "rejected"}
Path(OUTPUT_DIR).mkdir(parents=True)
Path(f"{OUTPUT_DIR}/train.jsonl").write_text("\\n".join(rows[:48]) + "\\n")
Path(f"{OUTPUT_DIR}/heldout.jsonl").write_text("\\n".join(rows[48:]) + "\\n")
print(rows[48])""",
    ),
    (
        "code",
        """\
from jaxtune.train import default_config

config = default_config()
config.stage = "dpo"
config.output_dir = OUTPUT_DIR
config.model.path = MODEL
config.data.train = f"{OUTPUT_DIR}/train.jsonl"
config.data.eval = f"{OUTPUT_DIR}/heldout.jsonl"
config.dpo.beta = 0.1  # how far the policy may move from the reference
config.dpo.loss_type = "sigmoid"  # DPO; ipo | hinge | robust | cdpo are the variants
config.peft.method = "lora"  # reference = the same params with the adapters off
config.peft.rank = 16
config.peft.alpha = 32.0
config.optim.lr = 1e-3
config.optim.warmup_steps = 4
config.train.steps = STEPS
config.train.batch_size = 4  # pairs per step
config.train.seq_len = 256  # chosen and rejected each get a row of this length
config.train.log_every = 1
config.train.eval_at_start = True
config.train.eval_every = max(STEPS // 4, 1)""",
    ),
    ("md", "## Train"),
    (
        "code",
        """\
from jaxtune import notebook
from jaxtune.train import train

result = train(config)
notebook.plot_metrics(
    OUTPUT_DIR,
    ["loss", "rewards/margins", "eval_rewards/margins", "eval_rewards/accuracies"],
    title="DPO",
)""",
    ),
    (
        "md",
        """\
## Export

`jaxtune export --checkpoint OUTPUT_DIR --out DIR` writes the merged policy (a Hugging Face
checkpoint); `--adapter` writes a PEFT adapter instead.""",
    ),
    (
        "code",
        """\
from jaxtune.train.export import export_merged

run = result.run
params = run.combine(result.state.params, run.frozen)
merged_dir = export_merged(run, params, f"{OUTPUT_DIR}/merged")
print(sorted(p.name for p in Path(merged_dir).iterdir()))""",
    ),
    ("md", "## What this notebook claims: on held-out pairs, the policy now prefers the chosen"),
    (
        "code",
        """\
start, end = result.evals[0], result.evals[STEPS]
for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"):
    print(f"{key}: {start[key]:.3f} -> {end[key]:.3f}")
assert end["eval_rewards/margins"] > start["eval_rewards/margins"] + 0.1
assert end["eval_rewards/accuracies"] > 0.75
assert end["eval_loss"] < start["eval_loss"]""",
    ),
]

# ----------------------------------------------------------------------------- 04 InstructGPT
INSTRUCTGPT: list[Cell] = [
    (
        "md",
        """\
# The InstructGPT pipeline: SFT → reward model → PPO

Ouyang et al. (2022) in three runs of the same `jaxtune.train.train`, each a `config.stage`:

1. **SFT** (`sft`): LoRA on demonstrations, merged into a new checkpoint. Here the
   demonstrations are of mixed quality on purpose: for about half of the prompts of the shipped
   `preference` set the demonstrated answer is a curt refusal ("I don't know."), so the SFT
   model learns to refuse often;
2. **reward model** (`rm`): the SFT model with a scalar head on its last token, trained on the
   preference pairs (helpful answer vs refusal) with the Bradley-Terry loss, 12 pairs held out;
   exported as a `*ForSequenceClassification` checkpoint;
3. **PPO** (`ppo`): the SFT model samples answers, the reward model scores them, and clipped
   PPO with a value head and a KL penalty to the SFT model (its LoRA adapters switched off)
   raises the score: the policy stops refusing.""",
    ),
    ("code", INSTALL),
    ("code", settings(30, "per stage (PPO: optimizer steps)", "runs/colab_instructgpt")),
    (
        "code",
        """\
# LoRA learning rate of SFT and RM (PPO: a tenth of it). The tests' tiny random model needs
# larger steps (1e-2) than a pretrained one.
LR = float(os.environ.get("JAXTUNE_NOTEBOOK_LR", "2e-3"))""",
    ),
    (
        "code",
        """\
import json
import random
from pathlib import Path

from jaxtune import notebook
from jaxtune.data import set_path
from jaxtune.train import default_config, train
from jaxtune.train.export import export_merged

pairs = [json.loads(r) for r in Path(set_path("preference")).read_text().splitlines()]
REFUSALS = {p["rejected"][0]["content"] for p in pairs}  # eight curt refusals
rng = random.Random(0)
demos = [  # mixed-quality demonstrations: the chosen or the rejected answer, 50/50
    {"messages": p["prompt"] + (p["chosen"] if rng.random() < 0.5 else p["rejected"])}
    for p in pairs[:48]
]


def write_jsonl(name, rows):
    path = Path(OUTPUT_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\\n" for r in rows))
    return str(path)


demos_file = write_jsonl("demos.jsonl", demos)
pairs_train = write_jsonl("pairs_train.jsonl", pairs[:48])
pairs_heldout = write_jsonl("pairs_heldout.jsonl", pairs[48:])
prompts = [p["prompt"][0]["content"] for p in pairs]
ppo_prompts = prompts[:48]  # the prompts of the demonstrations
prompts_file = write_jsonl("prompts.jsonl", [{"prompt": q} for q in ppo_prompts])
print(f"{sum(d['messages'][-1]['content'] in REFUSALS for d in demos)} of 48 demos refuse")


def base_config(stage, model, name):
    \"\"\"What the three runs share: LoRA rank 16 on every linear layer, small batches.\"\"\"
    config = default_config()
    config.stage = stage
    config.model.path = model
    config.output_dir = f"{OUTPUT_DIR}/{name}"
    config.peft.method = "lora"
    config.peft.rank = 16
    config.peft.alpha = 32.0
    config.optim.warmup_steps = 2
    config.train.steps = STEPS
    config.train.batch_size = 8
    config.train.seq_len = 256
    config.train.log_every = 1
    return config


def export(result, name):
    run = result.run
    params = run.combine(result.state.params, run.frozen)
    return str(export_merged(run, params, f"{OUTPUT_DIR}/{name}"))""",
    ),
    ("md", "## 1. SFT on the demonstrations"),
    (
        "code",
        """\
sft = base_config("sft", MODEL, "sft")
sft.data.train = demos_file
sft.data.packing = True
sft.optim.lr = LR
sft_result = train(sft)
sft_model = export(sft_result, "sft_merged")
notebook.plot_metrics(sft.output_dir, ["loss"], title="SFT")""",
    ),
    (
        "md",
        """\
## 2. Reward model on the preference pairs

The scalar head starts random, so the held-out accuracy starts near chance.""",
    ),
    (
        "code",
        """\
rm = base_config("rm", sft_model, "rm")
rm.data.train = pairs_train
rm.data.eval = pairs_heldout
rm.optim.lr = LR
rm.train.batch_size = 4  # pairs per step
rm.train.eval_at_start = True
rm.train.eval_every = max(STEPS // 3, 1)
rm_result = train(rm)
reward_model = export(rm_result, "rm_merged")  # LlamaForSequenceClassification, 1 label
notebook.plot_metrics(rm.output_dir, ["loss", "eval_accuracy"], title="reward model")""",
    ),
    (
        "md",
        """\
## 3. PPO against the reward model

Each rollout samples one answer per prompt (`ppo.max_new_tokens` at most), scores it with
the reward model, and takes `ppo_epochs × num_minibatches` optimizer steps (`train.steps`
counts those steps).""",
    ),
    (
        "code",
        """\
ppo = base_config("ppo", sft_model, "ppo")
ppo.data.train = prompts_file
ppo.data.truncation = "truncate"
ppo.train.seq_len = 64  # prompt tokens (left-padded)
ppo.train.batch_size = 16  # prompts per rollout
ppo.ppo.reward_model = reward_model
ppo.ppo.max_new_tokens = 24
ppo.ppo.ppo_epochs = 2
ppo.ppo.kl_coef = 0.05
ppo.optim.lr = LR / 10
ppo_result = train(ppo)
notebook.plot_metrics(ppo.output_dir, ["reward_mean", "kl", "response_length"], title="PPO")""",
    ),
    (
        "md",
        """\
## Before and after PPO

Greedy answers of the SFT policy (the PPO run's params with the LoRA update still zero) and
of the PPO policy to the PPO prompts, scored by the reward model.""",
    ),
    (
        "code",
        """\
import numpy as np

from jaxtune import models
from jaxtune.generate import generate_text

run = ppo_result.run
sft_policy = run.combine(run.trainable, run.frozen)  # LoRA B = 0: the SFT model
ppo_policy = run.combine(ppo_result.state.params, run.frozen)
rm_model, rm_params, rm_head = models.load_reward_model(reward_model)


def answers_and_scores(params):
    answers = generate_text(run.model, params, run.tokenizer, ppo_prompts, max_new_tokens=24)
    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}]
        for q, a in zip(ppo_prompts, answers, strict=True)
    ]
    texts = [run.tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    enc = run.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="np")
    scores = models.score(rm_model, rm_params, rm_head, enc["input_ids"], enc["attention_mask"])
    return answers, np.asarray(scores)


before, before_scores = answers_and_scores(sft_policy)
after, after_scores = answers_and_scores(ppo_policy)
for q, b, a in list(zip(ppo_prompts, before, after, strict=True))[:4]:
    print(f"Q: {q}\\n  SFT: {b}\\n  PPO: {a}\\n")
refusals = lambda answers: sum(a.strip() in REFUSALS for a in answers)
print(f"refusals: SFT {refusals(before)}/48, PPO {refusals(after)}/48")
print(f"mean reward-model score: SFT {before_scores.mean():.3f}, PPO {after_scores.mean():.3f}")
policy_model = export(ppo_result, "ppo_merged")  # the value head is dropped""",
    ),
    (
        "md",
        "## What this notebook claims: the RM separates held-out pairs, PPO raised its reward",
    ),
    (
        "code",
        """\
rm_start, rm_end = rm_result.evals[0], rm_result.evals[STEPS]
_, rewards = notebook.curve(notebook.read_metrics(ppo.output_dir), "reward_mean")
half = len(rewards) // 2
first, last = np.mean(rewards[:half]), np.mean(rewards[half:])
for key in ("eval_margin", "eval_accuracy"):
    print(f"reward model, held-out {key[5:]}: {rm_start[key]:.3f} -> {rm_end[key]:.3f}")
print(f"PPO mean reward of the rollouts: first half {first:.3f}, second half {last:.3f}")
assert rm_end["eval_margin"] > rm_start["eval_margin"] + 0.3  # r(chosen) - r(rejected)
# the reward PPO maximises, on greedy answers to all 48 PPO prompts (sampled rollouts: noisier)
assert after_scores.mean() > before_scores.mean() + 0.1""",
    ),
]

# ----------------------------------------------------------------------------- 05 own model
OWN_MODEL: list[Cell] = [
    (
        "md",
        """\
# jaxtune's transforms in your own Flax model

The PEFT and quantization transforms of jaxtune are pure functions on a params pytree: they
select weights by path (`"all-linear"`, module names, a regex or a predicate) and return a new
tree whose leaves may be adapters (`LoraWeight`, ...) or quantized weights. Nothing in your
model has to change:

- `peft.lora(params, targets, rank=..., rng=...)` adds LoRA leaves (B = 0: the same function);
- `peft.split_trainable(params)` gives the arrays to differentiate and the frozen rest;
- `peft.wrap(apply_fn)` makes any `apply(params, ...)` accept adapted params (it materialises
  `W + s·A·B` inside the function); `peft.merge` folds the adapters back into plain weights;
- `quant.quantize(params, targets, method="nf4")` stores chosen kernels in 4 bits (QLoRA).

Below: a linen MLP trained on task A, then adapted to task B with LoRA and with QLoRA, with a
hand-written optax loop; then the same with an NNX module; then a pretrained LLM (`MODEL`) in
the same loop.""",
    ),
    ("code", INSTALL),
    ("code", settings(300, "optimizer steps per fit")),
    (
        "code",
        """\
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import peft, quant


class MLP(nn.Module):
    \"\"\"A plain linen model: nothing in it knows about jaxtune.\"\"\"

    width: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.width, name="up")(x))
        x = nn.gelu(nn.Dense(self.width, name="mid")(x))
        return nn.Dense(1, name="out")(x)


W = np.random.default_rng(0).normal(size=(2, 16, 1)) / 4  # two directions in input space


def task(seed, shift, n=512):
    \"\"\"y = sin(3 x.w0 + shift) + cos(3 x.w1) at 16-d points (task A: shift 0).\"\"\"
    x = np.random.default_rng(seed).normal(size=(n, 16))
    y = np.sin(3 * x @ W[0] + shift) + np.cos(3 * x @ W[1])
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def fit(apply, params, x, y, steps=STEPS, lr=1e-2):
    \"\"\"Adam on what peft counts as trainable: everything in a plain tree; only the adapter
    arrays once a transform added adapters. The frozen rest gets no gradient and no optimizer
    state; it is an argument of the jitted step (closed over, it would be compiled into the
    program as constants).\"\"\"
    trainable, frozen = peft.split_trainable(params)
    opt = optax.adam(lr)
    opt_state = opt.init(trainable)

    def loss_fn(trainable, frozen):
        return jnp.mean((apply(peft.combine(trainable, frozen), x) - y) ** 2)

    @jax.jit
    def step(trainable, frozen, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        trainable, opt_state, loss = step(trainable, frozen, opt_state)
        losses.append(float(loss))
    return peft.combine(trainable, frozen), losses


def mse(apply, params, x, y):
    return float(jnp.mean((apply(params, x) - y) ** 2))


model = MLP()
x_a, y_a = task(0, shift=0.0)
x_b, y_b = task(1, shift=1.0)
base, base_losses = fit(model.apply, model.init(jax.random.key(0), x_a), x_a, y_a)
print(
    f"base model: task A loss {mse(model.apply, base, x_a, y_a):.4f}, "
    f"task B loss {mse(model.apply, base, x_b, y_b):.4f}"
)""",
    ),
    (
        "md",
        """\
## LoRA on the linen model

`peft.select` shows which kernels a target spec picks (paths read like the params tree).
Rank 4 on the two hidden layers: the output layer (`[128, 1]`) has no room for a rank-4
update.""",
    ),
    (
        "code",
        """\
print(peft.select(base, ["up", "mid"]))
apply = peft.wrap(model.apply)
adapted = peft.lora(base, ["up", "mid"], rank=4, alpha=8.0, rng=jax.random.key(1))
peft.print_trainable_parameters(adapted)
lora_init_diff = float(jnp.abs(apply(adapted, x_b) - model.apply(base, x_b)).max())
print(f"adapted vs base at init, max |diff|: {lora_init_diff}")

adapted, lora_losses = fit(apply, adapted, x_b, y_b)
merged = peft.merge(adapted)  # plain linen params again: model.apply(merged, x)
merge_diff = float(jnp.abs(model.apply(merged, x_b) - apply(adapted, x_b)).max())
print(
    f"LoRA on task B: {lora_losses[0]:.4f} -> {lora_losses[-1]:.4f}; "
    f"merged vs adapted max |diff| {merge_diff:.1e}"
)""",
    ),
    (
        "md",
        """\
## QLoRA on the linen model

Quantize the `[128, 128]` hidden kernel to NF4 (blocks of 64 along its input axis), then add
LoRA on top: the LoRA leaf takes the quantized weight as its base. The quantized base is
frozen (it is not a float array), so only `A` and `B` train.""",
    ),
    (
        "code",
        """\
qbase = quant.quantize(base, ["mid"], method="nf4", block_size=64)
w, qw = base["params"]["mid"]["kernel"], qbase["params"]["mid"]["kernel"]
print(type(qw).__name__, f"{w.nbytes} -> {qw.nbytes} bytes")
qadapted = peft.lora(qbase, ["up", "mid"], rank=4, alpha=8.0, rng=jax.random.key(2))
qlora_init_diff = float(jnp.abs(apply(qadapted, x_b) - apply(qbase, x_b)).max())
qadapted, qlora_losses = fit(apply, qadapted, x_b, y_b)
print(f"QLoRA on task B: {qlora_losses[0]:.4f} -> {qlora_losses[-1]:.4f}")""",
    ),
    (
        "md",
        """\
## The same with an NNX module

`nnx.split` gives a state pytree; the transforms act on it like on linen params, and `wrap`
takes a function of the state.""",
    ),
    (
        "code",
        """\
from flax import nnx


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(16, 128, rngs=rngs)
        self.mid = nnx.Linear(128, 128, rngs=rngs)
        self.out = nnx.Linear(128, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.gelu(self.mid(nnx.gelu(self.up(x)))))


graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
nnx_apply = lambda state, x: nnx.merge(graphdef, state)(x)
nnx_base, _ = fit(nnx_apply, state, x_a, y_a)
nnx_adapted = peft.lora(nnx_base, ["up", "mid"], rank=4, alpha=8.0, rng=jax.random.key(3))
wrapped = peft.wrap(nnx_apply)
nnx_init_diff = float(jnp.abs(wrapped(nnx_adapted, x_b) - nnx_apply(nnx_base, x_b)).max())
nnx_adapted, nnx_losses = fit(wrapped, nnx_adapted, x_b, y_b)
print(f"NNX LoRA on task B: {nnx_losses[0]:.4f} -> {nnx_losses[-1]:.4f}")""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(base_losses, label="base (task A, full training)")
ax.plot(lora_losses, label="LoRA (task B)")
ax.plot(qlora_losses, label="QLoRA (task B)")
ax.plot(nnx_losses, label="NNX LoRA (task B)")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("MSE")
ax.legend()
plt.show()""",
    ),
    (
        "md",
        """\
## A pretrained LLM in your own loop

jaxtune's own models route every matmul through `jaxtune.models.layers.linear`, which lets an
adapter or quantized leaf do its own matmul (LoRA as `x·W + s·(x·A)·B`, never forming
`W + s·A·B`): no `wrap` needed. The same `fit` pattern, on `MODEL` with a next-token loss.""",
    ),
    (
        "code",
        """\
import jaxtune.models as jm
from jaxtune import losses
from jaxtune.hub.smollm2 import smollm2_path

llm, llm_params = jm.load(MODEL or smollm2_path())
tokenizer = jm.load_tokenizer(MODEL or smollm2_path())
llm_params = peft.lora(llm_params, "all-linear", rank=8, alpha=16.0, rng=jax.random.key(4))
text = "Arr! The sea be wide and the wind be strong, matey. Ye best hold on to yer hat!"
ids = np.asarray([tokenizer(text)["input_ids"]], np.int32)


trainable, frozen = peft.split_trainable(llm_params)


def lm_loss(trainable, frozen, ids):
    logits = llm.apply(peft.combine(trainable, frozen), ids[:, :-1])
    total, count = losses.lm_loss(logits, ids[:, 1:], jnp.ones(ids[:, 1:].shape, jnp.float32))
    return total / count


opt = optax.adam(1e-3)
opt_state = opt.init(trainable)


@jax.jit
def lm_step(trainable, frozen, opt_state, ids):
    loss, grads = jax.value_and_grad(lm_loss)(trainable, frozen, ids)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss


llm_losses = []
for _ in range(10):
    trainable, opt_state, loss = lm_step(trainable, frozen, opt_state, ids)
    llm_losses.append(float(loss))
print(f"LLM LoRA on one sentence: {llm_losses[0]:.3f} -> {llm_losses[-1]:.3f}")""",
    ),
    ("md", "## What this notebook claims"),
    (
        "code",
        """\
print(
    f"at init, adapted == base: linen {lora_init_diff}, QLoRA {qlora_init_diff}, "
    f"NNX {nnx_init_diff}"
)
assert lora_init_diff == 0.0 and qlora_init_diff == 0.0 and nnx_init_diff == 0.0
assert merge_diff < 1e-4
for name, curve in [("LoRA", lora_losses), ("QLoRA", qlora_losses), ("NNX", nnx_losses)]:
    assert curve[-1] < 0.2 * curve[0], (name, curve[0], curve[-1])
assert llm_losses[-1] < llm_losses[0] - 0.5, llm_losses""",
    ),
]

NOTEBOOKS: dict[str, list[Cell]] = {
    "01_lora_sft.ipynb": LORA_SFT,
    "02_qlora.ipynb": QLORA,
    "03_dpo.ipynb": DPO,
    "04_instructgpt.ipynb": INSTRUCTGPT,
    "05_transforms_in_your_flax_model.ipynb": OWN_MODEL,
}


def build(cells: list[Cell]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": []},
    }
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        cell = make(source.rstrip("\n"))
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells: list[Cell]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path, text = HERE / name, render(cells)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run colab/_build.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
