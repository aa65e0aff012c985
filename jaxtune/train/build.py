"""From a config to the pieces of a run: model, tokenizer, transformed params, optimizer, data.

Each piece is a call into the package that owns it (models, quant, peft, optim, data, sharding);
this module only wires them in the order the design draws:

    models.load ─► peft.<method> ─► stage.init_params ─► peft.split_trainable
    (quant.load_quantized when quant.method != none)    └► optim.build(labels)

Quantized runs load through `quant.load_quantized`, which quantizes layer by layer while reading
(never the whole float model in memory) and gives the same params as load-then-quantize. The
param and compute dtypes are `optim.model_dtypes(optim.mixed_precision)` when that mode is not
"none", else model.dtype / model.compute_dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from jaxtune.errors import UserError
from jaxtune.models.reward_model import HEAD_KEY, is_reward_checkpoint, load_reward_model
from jaxtune.train import shardings as sh
from jaxtune.train.stages import Stage, make_stage

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once from the config."""

    config: ml_collections.ConfigDict
    model: Any
    stage: Stage
    mesh: Mesh
    rules: Any  # logical-axis rules (jaxtune.sharding)
    trainable: Any  # the params that train (a tree with None where frozen)
    frozen: Any  # the rest (None where trainable); {} for full fine-tuning
    combine: Callable[[Any, Any], Any]
    prepare_params: Callable[[Any, jax.Array], Any] | None
    mask_updates: Callable[[Any, Any], Any] | None
    optimizer: optax.GradientTransformation
    schedule: Callable[[Any], Any] | None
    trainable_shardings: Any = None
    frozen_shardings: Any = None
    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use, checked against the model's vocabulary)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config)
            check_vocab(
                self.model, self._tokenizer, self.config.model.tokenizer or model_path(self.config)
            )
        return self._tokenizer

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def uses_peft(self) -> bool:
        return self.config.peft.method != "none"


# ----------------------------------------------------------------------------- model
def model_path(config: ml_collections.ConfigDict) -> str:
    """config.model.path, or the embedded SmolLM2-135M-Instruct when it is empty."""
    if config.model.path:
        return str(config.model.path)
    from jaxtune.hub.smollm2 import smollm2_path

    return str(smollm2_path())


def model_dtypes(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(param dtype, compute dtype or None) of the run: optim.mixed_precision's when it is set
    (bf16: fp32 params, bf16 compute; pure_bf16: bf16 both), else model.dtype/compute_dtype."""
    from jaxtune.optim import model_dtypes as precision_dtypes

    m = config.model
    dtype, compute = DTYPES[m.dtype], DTYPES[m.compute_dtype] if m.compute_dtype else None
    mixed_dtype, mixed_compute = precision_dtypes(config.optim.mixed_precision)
    return mixed_dtype or dtype, mixed_compute or compute


def load_model(
    config: ml_collections.ConfigDict, shardings: Callable | None = None
) -> tuple[Any, Any]:
    """(model, params) with the run's dtypes (`model_dtypes`), remat policy and attention;
    each tensor lands on `shardings(name, shape)` while loading. With quant.method != "none"
    the targeted kernels are quantized while reading (`quant.load_quantized`). A reward model
    (`*ForSequenceClassification`) loads with its head at params["score"]."""
    dtype, compute = model_dtypes(config)
    common = dict(
        dtype=dtype,
        shardings=shardings,
        compute_dtype=compute,
        remat=config.train.remat,
        attention_impl=config.model.attention_impl,
    )
    if is_reward_checkpoint(model_path(config)):  # a reward model: keep its head
        model, params, head = load_reward_model(model_path(config), **common)
        return model, {**quantize(config, params), HEAD_KEY: head}
    if config.quant.method != "none":
        quant = _quant_module(config)
        q = config.quant
        return quant.load_quantized(
            model_path(config),
            targets=_targets(q.targets),
            method=q.method,
            block_size=q.block_size,
            double_quant=q.double_quant,
            **common,
        )
    from jaxtune import models

    path = model_path(config)
    return models.load(path, common.pop("dtype"), **common)


def load_tokenizer(config: ml_collections.ConfigDict) -> Any:
    from jaxtune.models import load_tokenizer as load

    return load(config.model.tokenizer or model_path(config))


def check_vocab(model: Any, tokenizer: Any, where: str) -> None:
    """The tokenizer's ids must index the model's embedding."""
    n_tok, n_model = len(tokenizer), model.config.vocab_size
    if n_tok > n_model:
        raise UserError(
            f"{where}: the tokenizer has {n_tok} tokens but the model's vocabulary has "
            f"{n_model} rows; token ids >= {n_model} would index past the embedding. Use the "
            "tokenizer that belongs to the model (model.tokenizer) or a model with a larger "
            "vocabulary."
        )


def check_batch_ids(batch: dict, vocab_size: int, step: int) -> None:
    """Token ids of a host batch must be < vocab_size (cheap check on numpy arrays)."""
    for key, value in batch.items():
        if key.endswith(("input_ids", "targets", "prompt_ids")) and value.size:
            top = int(value.max())
            if top >= vocab_size:
                raise UserError(
                    f"the batch of step {step} holds token id {top} in {key!r}, but the model's "
                    f"vocabulary has {vocab_size} entries: the data was tokenized with another "
                    "tokenizer than the model's (check model.tokenizer)."
                )


# ----------------------------------------------------------------------------- transforms
def _targets(text: str) -> Any:
    """A config string of targets: "all-linear", a regex, or comma-separated module names."""
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def _quant_module(config: ml_collections.ConfigDict) -> Any:
    try:
        from jaxtune import quant
    except ImportError:
        raise UserError(
            f"quant.method={config.quant.method!r} needs jaxtune.quant, which is not installed."
        ) from None
    return quant


def quantize(config: ml_collections.ConfigDict, params: Any) -> Any:
    """Quantize loaded float params as the config says (what `load_model` does while reading;
    kept for callers that already hold float params)."""
    q = config.quant
    if q.method == "none":
        return params
    return _quant_module(config).quantize(
        params,
        targets=_targets(q.targets),
        method=q.method,
        block_size=q.block_size,
        double_quant=q.double_quant,
    )


def apply_peft(config: ml_collections.ConfigDict, params: Any, rng: jax.Array) -> Any:
    p = config.peft
    if p.method == "none":
        return params
    from jaxtune import peft

    targets = _targets(p.targets)
    if p.method == "freeze":
        extra = [m.strip() for m in p.extra_modules.split(",") if m.strip()]
        modules = p.trainable_modules
        modules = "all" if modules == "all" else [m.strip() for m in modules.split(",")]
        return peft.freeze(
            params,
            trainable_layers=p.trainable_layers,
            trainable_modules=modules,
            extra_modules=extra,
        )
    if p.method == "adapter":
        if targets == "all-linear":
            return peft.adapter(params, bottleneck=p.bottleneck, rng=rng)
        return peft.adapter(params, targets, bottleneck=p.bottleneck, rng=rng)
    low_rank = dict(rank=p.rank, alpha=p.alpha, dropout=p.dropout, rslora=p.rslora, rng=rng)
    if p.init == "pissa":
        if p.method != "lora":
            raise UserError("peft.init='pissa' initialises LoRA leaves: set peft.method='lora'.")
        niter = p.pissa_niter if p.pissa_niter > 0 else None
        return peft.pissa(params, targets, niter=niter, **low_rank)
    if p.init != "default":
        raise UserError(f"peft.init={p.init!r}: choose 'default' or 'pissa'.")
    transform = peft.lora if p.method == "lora" else peft.dora
    return transform(params, targets, **low_rank)


def full_params(trainable: Any, frozen: Any) -> Any:
    """`combine` of full fine-tuning: everything trains, nothing is frozen."""
    return trainable


def trainable_mask(config: ml_collections.ConfigDict, params: Any) -> Any:
    """peft.trainable_mask(params), or None when everything trains."""
    if config.peft.method == "none":
        return None
    from jaxtune import peft

    return peft.trainable_mask(params)


def partition(config: ml_collections.ConfigDict, params: Any) -> tuple[Any, Any, Callable]:
    """(trainable, frozen, combine). Full fine-tuning: everything trains, frozen is {}."""
    if config.peft.method == "none":
        return params, {}, full_params
    from jaxtune import peft

    trainable, frozen = peft.split_trainable(params)
    return trainable, frozen, peft.combine


def peft_hooks(config: ml_collections.ConfigDict) -> tuple[Callable | None, Callable | None]:
    """(prepare_params, mask_updates): fresh dropout keys per step for LoRA/DoRA dropout.

    (The frozen layers of freeze-tuning need no mask here: jaxtune.optim's update is exactly
    zero on them.)"""
    if config.peft.method not in ("lora", "dora") or config.peft.dropout <= 0:
        return None, None
    from jaxtune import peft

    return peft.with_dropout_rng, None


# ----------------------------------------------------------------------------- optimizer
def build_optimizer(
    config: ml_collections.ConfigDict, trainable: Any
) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, learning-rate schedule) over the trainable params (labels from peft)."""
    from jaxtune import optim

    steps = int(config.train.steps)
    return optim.build(config.optim, trainable, total_steps=steps), optim.schedule(
        config.optim, steps
    )


# ----------------------------------------------------------------------------- data
def make_batches(
    config: ml_collections.ConfigDict, tokenizer: Any, stage: Stage, split: str
) -> Iterator[dict]:
    """The data worker's iterator for `split` ("train" repeats; "eval" is one pass)."""
    from jaxtune.data import make_batches as data_batches

    return data_batches(
        config.data,
        tokenizer,
        stage=stage.name,
        split=split,
        batch_size=config.train.batch_size,
        seq_len=config.train.seq_len,
    )


# ----------------------------------------------------------------------------- the run
def build_run(config: ml_collections.ConfigDict, *, quiet: bool = False) -> Run:
    """Load, transform and split the params; build the optimizer. Data iterators are separate."""
    from jaxtune import sharding

    mesh = sharding.make_mesh(config.sharding)
    rules = sharding.rules_from_config(config.sharding)
    sh.check_batch_size(config.train.batch_size, config.train.grad_accum, mesh, rules)
    stage = make_stage(config)
    model, params = load_model(config, sharding.sharding_fn(mesh, rules))
    loaded_head = params.pop(HEAD_KEY, None)  # a reward model's head (stages with set_head)
    rng = jax.random.PRNGKey(config.seed)
    params = apply_peft(config, params, jax.random.fold_in(rng, 1))
    params = stage.init_params(model, params, jax.random.fold_in(rng, 2))
    if loaded_head is not None and hasattr(stage, "set_head"):
        params = stage.set_head(params, loaded_head)
    if config.peft.method != "none" and not quiet and jax.process_index() == 0:
        from jaxtune import peft

        peft.print_trainable_parameters(params)
    trainable_sh, frozen_sh = sh.params_shardings(
        params, mesh, rules, trainable_mask(config, params)
    )
    trainable, frozen, combine = partition(config, params)
    trainable = jax.device_put(trainable, trainable_sh)
    frozen = jax.device_put(frozen, frozen_sh)
    optimizer, schedule = build_optimizer(config, trainable)
    prepare, mask = peft_hooks(config)
    return Run(
        config=config,
        model=model,
        stage=stage,
        mesh=mesh,
        rules=rules,
        trainable_shardings=trainable_sh,
        frozen_shardings=frozen_sh,
        trainable=trainable,
        frozen=frozen,
        combine=combine,
        prepare_params=prepare,
        mask_updates=mask,
        optimizer=optimizer,
        schedule=schedule,
    )
