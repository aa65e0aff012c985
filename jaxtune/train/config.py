"""The run config: every key a `configs/*.py` recipe or `--config.x.y=v` may set, with defaults.

    config = default_config()          # ml_collections.ConfigDict, sections below
    check_keys(config)                 # unknown keys -> UserError naming the nearest known key

Sections: top level (stage, seed, output_dir), model, data, peft, quant, optim, train, sharding,
distributed, log, plus one section per stage that declares one (`CONFIG_SECTION` +
`default_config()` in its module in jaxtune/train/stages/). The data, optim, sharding and
distributed sections are those packages' own `default_config()`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

import ml_collections

from jaxtune import data, optim, sharding
from jaxtune.errors import UserError
from jaxtune.sharding import distributed

PEFT_METHODS = ("none", "freeze", "lora", "dora", "adapter")
QUANT_METHODS = ("none", "nf4", "fp4", "int8")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")


def model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            path="",  # checkpoint dir, .gguf file or hub id; "" = the embedded SmolLM2-135M
            tokenizer="",  # "" = from model.path
            dtype="float32",  # stored params (the frozen base for PEFT runs)
            compute_dtype="",  # activations; "" = dtype. bfloat16 with fp32 params = mixed
            attention_impl="auto",  # fused kernels on GPU/TPU, reference on CPU
        )
    )


def peft_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            method="none",  # none | freeze | lora | dora | adapter
            targets="all-linear",  # regex on param paths, module names "q_proj,v_proj", ...
            rank=8,  # lora / dora
            alpha=16.0,  # scale = alpha / rank (alpha / sqrt(rank) with rslora)
            dropout=0.0,
            rslora=False,
            init="default",  # default | pissa (principal singular vectors in A, B)
            pissa_niter=0,  # > 0: randomized SVD with this many power iterations
            bottleneck=64,  # adapter: hidden width of the Houlsby bottleneck
            trainable_layers=2,  # freeze: last N layers train (N < 0: first |N|)
            trainable_modules="all",  # freeze: "all" or module names in a layer
            extra_modules="",  # freeze: modules outside the layers that train whole
        )
    )


def quant_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            method="none",  # none | nf4 | fp4 | int8: the frozen base weights (QLoRA)
            targets="all-linear",
            block_size=64,
            double_quant=None,  # None = on for nf4/fp4 (8-bit absmax constants in blocks of
            # 256, as QLoRA), off for int8 (which keeps fp32 scales); True/False to force
        )
    )


def train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            steps=100,  # optimizer steps
            batch_size=8,  # rows per optimizer step (all devices, all micro-batches)
            seq_len=512,  # tokens per row (packed or padded)
            grad_accum=1,  # micro-batches per step (same effective batch, less memory)
            remat="dots",  # layer recompute in backward: dots (keep matmul outputs; fastest on
            # CPU and less memory than none) | full (least memory) | none (keep everything)
            loss_chunk=1024,  # LM head + loss on this many tokens at a time (never all the
            # [B, T, vocab] fp32 logits at once); 0 = all at once. Same loss either way.
            log_every=10,
            eval_every=0,  # 0 = only at the end (when data.eval is set)
            eval_at_start=False,  # also evaluate before the first step
            eval_batches=0,  # 0 = the whole eval set
            save_every=0,  # 0 = only at the end
            max_to_keep=2,
            async_checkpoint=True,
            resume=True,  # continue from the newest checkpoint in output_dir
        )
    )


def log_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(tensorboard=True, wandb_project="", run_name="", progress=True)
    )


def stage_sections() -> dict[str, ml_collections.ConfigDict]:
    """{section: defaults} of the stages that declare a config section."""
    from jaxtune.train import stages

    sections = {}
    for name in stages.available():
        module = importlib.import_module(f"{stages.__name__}.{name}")
        section = getattr(module, "CONFIG_SECTION", None)
        if section and section not in sections:
            sections[section] = module.default_config()
    return sections


def default_config() -> ml_collections.ConfigDict:
    """Every known key with its default (recipes start from this and change a few)."""
    config = ml_collections.ConfigDict()
    config.stage = "sft"  # pt | sft | (rm, dpo, ppo, ... see jaxtune/train/stages)
    config.seed = 0
    config.output_dir = "runs/default"
    config.model = model_config()
    config.data = data.default_config()
    config.peft = peft_config()
    config.quant = quant_config()
    config.optim = optim.default_config()
    config.train = train_config()
    # Mesh (data, fsdp, tensor) sizes (-1 = the remaining devices) and the layout topology:
    # dp | fsdp | fsdp_tp (see jaxtune.sharding).
    config.sharding = sharding.default_config()
    # Multi-host: how this process joins the others (jaxtune.sharding.distributed); one
    # process needs nothing.
    config.distributed = distributed.default_config()
    config.log = log_config()
    for section, defaults in stage_sections().items():
        config[section] = defaults
    return config


def flat_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} for every leaf key of a (nested) ConfigDict."""
    out = {}
    for key in config:
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and len(value) > 0:
            out.update(flat_keys(value, name + "."))
        else:
            out[name] = value
    return out


def suggest(key: str, known: list[str]) -> str:
    """' Did you mean x?' for the nearest known key (empty when nothing is close)."""
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not near:
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        near = [by_leaf[close[0]]] if close else []
    return f" Did you mean {near[0]}?" if near else ""


# Sections whose keys are free-form (a dict of column names, ...): not checked inside.
OPEN_SECTIONS = ("data.columns", "sharding.rules")


def check_keys(config: Any, source: str = "config") -> None:
    """Raise UserError for a key that default_config() does not have (naming the nearest)."""
    known = flat_keys(default_config())
    known_names = list(known)
    for key in flat_keys(config):
        if key in known or any(key.startswith(s + ".") or key == s for s in OPEN_SECTIONS):
            continue
        raise UserError(f"{source}: unknown key {key!r}.{suggest(key, known_names)}")


def attention_impls() -> tuple[str, ...]:
    """The names `model.attention_impl` accepts (jaxtune.models.attention's registry)."""
    from jaxtune.models.attention import ATTENTION_IMPLS

    return tuple(sorted(ATTENTION_IMPLS))


def check_values(config: Any) -> None:
    """Raise UserError for values that cannot work (naming the key and the choices)."""
    choices = {
        "peft.method": PEFT_METHODS,
        "quant.method": QUANT_METHODS,
        "model.dtype": DTYPES,
        "train.remat": REMAT,
        "model.attention_impl": attention_impls(),
    }
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in allowed:
            raise UserError(f"config.{key}={value!r}: choose one of {allowed}.")
    if config.model.compute_dtype and config.model.compute_dtype not in DTYPES:
        raise UserError(f"config.model.compute_dtype={config.model.compute_dtype!r}: {DTYPES}.")
    t = config.train
    for key in ("steps", "batch_size", "seq_len", "grad_accum"):
        if int(t[key]) < 1:
            raise UserError(f"config.train.{key}={t[key]} must be >= 1.")
    if t.batch_size % t.grad_accum:
        raise UserError(
            f"config.train.batch_size={t.batch_size} does not split into "
            f"train.grad_accum={t.grad_accum} micro-batches; make it a multiple."
        )
    check_accumulation(int(config.optim.get("grad_accum_steps", 1)), int(t.grad_accum))
    if config.quant.method != "none" and config.peft.method not in ("lora", "dora", "adapter"):
        raise UserError(
            f"config.quant.method={config.quant.method!r} quantizes frozen base weights: it "
            "needs peft.method lora, dora or adapter (QLoRA)."
        )


def check_accumulation(optim_steps: int, train_micro: int) -> None:
    """One way of accumulating gradients: train.grad_accum (micro-batches inside one jitted
    step, divided by the tokens of all of them). optim.grad_accum_steps (optax.MultiSteps across
    steps) would make every train step a fraction of an update and the schedule count wrong."""
    if optim_steps == 1:
        return
    if optim_steps > 1 and train_micro > 1:
        raise UserError(
            f"config.optim.grad_accum_steps={optim_steps} and config.train.grad_accum="
            f"{train_micro} are two ways of accumulating gradients; use one: set "
            f"train.grad_accum (micro-batches inside one step, exact token-weighted mean) and "
            "optim.grad_accum_steps=1."
        )
    raise UserError(
        f"config.optim.grad_accum_steps={optim_steps}: the train loop accumulates with "
        f"train.grad_accum instead (micro-batches inside one step); set "
        f"train.grad_accum={max(optim_steps, 1)} and optim.grad_accum_steps=1."
    )
