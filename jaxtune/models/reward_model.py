"""Reward models: load one and score sequences with it.

    model, params, head = jaxtune.models.load_reward_model("exported/rm")   # or a run dir
    rewards = jaxtune.models.score(model, params, head, input_ids, mask)    # [B] fp32

A reward model is a decoder backbone plus a scalar head on the hidden state of the last token
of each sequence (the last position where `mask` is nonzero). On disk it is a transformers
`<Family>ForSequenceClassification` checkpoint with num_labels=1 (what `jaxtune export` writes
for a `rm` run, and what trl's RewardTrainer saves): the backbone's tensors and `score.weight`
[1, D], whose transpose is `head["kernel"]` [D, 1]. A jaxtune run directory of a `rm` run
(its output_dir or one checkpoints/<step>) loads too, with its adapters kept as they trained.

The head dict is jaxtune.losses.reward's: `sequence_reward(head, hidden, mask)` is the score.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import CheckpointError
from jaxtune.models.decoder import CausalLM, Params
from jaxtune.models.families import family_for
from jaxtune.models.load import (
    ShardingFn,
    open_safetensors,
    params_from_tensors,
    read_config,
    resolve,
)

SCORE_TENSOR = "score.weight"  # transformers' *ForSequenceClassification head, [num_labels, D]
HEAD_KEY = "score"  # where a `rm` run keeps its head in the params tree
Head = dict[str, jax.Array]


def is_reward_checkpoint(path_or_id: str | Path) -> bool:
    """True for a local HF checkpoint directory that holds a sequence-classification head."""
    path = Path(path_or_id)
    if not (path / "config.json").is_file():
        return False
    try:
        return SCORE_TENSOR in open_safetensors(path)
    except CheckpointError:
        return False


def is_run_directory(path: str | Path) -> bool:
    """A jaxtune output_dir, its checkpoints/ directory, or one checkpoints/<step>."""
    path = Path(path)
    return (
        (path / "checkpoints").is_dir()
        or (path / "state").is_dir()
        or (path.is_dir() and path.name == "checkpoints")
    )


def load_reward_model(
    path_or_id: str | Path,
    dtype: Any = jnp.float32,
    *,
    compute_dtype: Any = None,
    shardings: ShardingFn | None = None,
    remat: str = "none",
    attention_impl: str = "auto",
    revision: str | None = None,
) -> tuple[CausalLM, Params, Head]:
    """(model, backbone params, head) of a reward model.

    path_or_id: an HF `*ForSequenceClassification` checkpoint with one label (local directory
      or hub id; `jaxtune export` of a `rm` run writes one), or a `rm` run's directory.
    dtype: the backbone params' dtype; the head is always fp32 (it is D numbers).

    Example:
        model, params, head = load_reward_model("exported/rm")
        ids = tokenizer(["Q: 2+2? A: 4"], return_tensors="np")
        score(model, params, head, ids["input_ids"], ids["attention_mask"])   # -> [1]
    """
    if is_run_directory(path_or_id):
        return _from_run(path_or_id)
    location = resolve(path_or_id, revision)
    if location.suffix == ".gguf":
        raise CheckpointError(
            f"{location}: a GGUF file holds a causal LM, not a reward model; give a "
            "*ForSequenceClassification checkpoint directory (jaxtune export of a rm run)."
        )
    hf_config = read_config(location)
    tensors = open_safetensors(location)
    source = str(location / "config.json")
    if SCORE_TENSOR not in tensors:
        raise CheckpointError(
            f"{location}: no {SCORE_TENSOR!r} tensor, so this is not a reward model (a "
            "*ForSequenceClassification checkpoint). Export a rm run with `jaxtune export`, "
            "or train one with stage=rm."
        )
    family = family_for(hf_config.get("model_type"), source)
    config = family.config_from_hf(hf_config)
    weight = np.asarray(tensors[SCORE_TENSOR], np.float32)
    if weight.shape != (1, config.hidden_size):
        raise CheckpointError(
            f"{location}: {SCORE_TENSOR} has shape {tuple(weight.shape)}; a reward model has one "
            f"label, shape (1, {config.hidden_size}) (num_labels=1)."
        )
    if "lm_head.weight" not in tensors and not config.tie_embeddings:
        # A classifier has no LM head: read the backbone as a tied model (logits unused).
        config = config.replace(tie_embeddings=True)
    if config.pad_token_id is None and hf_config.get("pad_token_id") is not None:
        config = config.replace(pad_token_id=int(hf_config["pad_token_id"]))
    model = CausalLM(config, compute_dtype, remat, attention_impl)
    backbone = _Without(tensors, {SCORE_TENSOR, "lm_head.weight"})
    params = params_from_tensors(backbone, family, config, dtype, shardings, source=str(location))
    return model, params, {"kernel": jnp.asarray(weight.T)}


def _from_run(path: str | Path) -> tuple[CausalLM, Params, Head]:
    from jaxtune.train.restore import load_trained

    run, params, _ = load_trained(path)
    if run.config.stage != "rm" or HEAD_KEY not in params:
        raise CheckpointError(
            f"{path}: a run of stage {run.config.stage!r}; a reward model is a run of stage 'rm'."
        )
    head = params[HEAD_KEY]
    backbone = {k: v for k, v in params.items() if k != HEAD_KEY}
    if run.config.peft.method != "none":
        from jaxtune import peft

        backbone = peft.merge(backbone)
    if run.config.quant.method != "none":
        from jaxtune import quant

        backbone = quant.dequantize(backbone)
    return run.model, backbone, head


class _Without(Mapping[str, np.ndarray]):
    """A tensor mapping with some names hidden."""

    def __init__(self, tensors: Mapping[str, np.ndarray], hidden: set[str]):
        self.tensors, self.hidden = tensors, hidden

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.hidden:
            raise KeyError(key)
        return self.tensors[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.tensors if k not in self.hidden)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key not in self.hidden and key in self.tensors


# ----------------------------------------------------------------------------- scoring
def score(
    model: CausalLM,
    params: Params,
    head: Head,
    batch_or_ids: Mapping[str, Any] | Any,
    mask: Any = None,
) -> jax.Array:
    """Reward [B] fp32 of each sequence: the head on the hidden state of its last token.

    batch_or_ids: token ids [B, T] with `mask` [B, T] (1 = token, 0 = padding, left or right;
      None = no padding), or a batch-contract dict with `input_ids`, `segment_ids` (and
      `positions`), one sequence per row. Positions count the tokens of each row from 0, so a
      left-padded row scores as its right-padded twin.

    Example:
        enc = tokenizer(texts, padding=True, return_tensors="np")
        rewards = score(model, params, head, enc["input_ids"], enc["attention_mask"])
    """
    if isinstance(batch_or_ids, Mapping):
        ids = jnp.asarray(batch_or_ids["input_ids"])
        mask = jnp.asarray(batch_or_ids["segment_ids"]) > 0
        positions = batch_or_ids.get("positions")
    else:
        ids = jnp.asarray(batch_or_ids)
        mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask) > 0
        positions = None
    if positions is None:
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
    return _score(model, params, head, ids, jnp.asarray(positions, jnp.int32), mask)


@functools.partial(jax.jit, static_argnames="model")
def _score(model, params, head, ids, positions, mask):
    from jaxtune.losses.reward import sequence_reward

    segment_ids = mask.astype(jnp.int32)
    hidden, _ = model.hidden_states(
        params, ids, positions=positions, segment_ids=segment_ids, attention_mask=mask
    )
    return sequence_reward(head, hidden, mask)
