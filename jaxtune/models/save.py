"""`save(dir, model, params)`: config.json + safetensors that transformers loads to the same
logits.

With `score_head` (a reward model's {"kernel": [D, 1]}) the checkpoint is a transformers
`<Family>ForSequenceClassification` with num_labels=1 instead: the backbone, `score.weight`
[1, D] (the kernel transposed), no LM head, and `pad_token_id` set (transformers scores the last
token that is not padding). `AutoModelForSequenceClassification` and trl load it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import CheckpointError
from jaxtune.models.config import ModelConfig
from jaxtune.models.decoder import CausalLM, Params
from jaxtune.models.families import family_for
from jaxtune.models.layers import LinearLeaf
from jaxtune.models.safetensors_io import write_safetensors
from jaxtune.models.weight_map import to_hf_state

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
DTYPE_NAMES = {jnp.float32: "float32", jnp.bfloat16: "bfloat16", jnp.float16: "float16"}


def save(
    directory: str | os.PathLike,
    model: CausalLM,
    params: Params,
    tokenizer: Any = None,
    *,
    dtype: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    score_head: dict[str, Any] | None = None,
) -> Path:
    """Write an HF checkpoint. Params must be plain arrays: merge adapters / dequantize first.

    dtype: the stored dtype (None keeps the params' own). Above `max_shard_bytes` the weights
    are split into model-0000i-of-0000n.safetensors with an index, as transformers does.
    score_head: write a sequence classifier (reward model) with this head; see the module doc.
    """
    directory = Path(directory)
    leaves = _check_params(model, params)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    family = family_for(cfg.hf_config.get("model_type", cfg.family))
    target = None if dtype is None else jnp.dtype(dtype)

    state = to_hf_state(family, params, cfg.num_layers)
    architecture, updates = family.architecture, {}
    if score_head is not None:
        state = _classifier_state(state, score_head)
        architecture = classifier_architecture(family.architecture)
        updates = classifier_config(cfg, tokenizer)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in state:
        if target is not None:
            arr = arr.astype(target)
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    stored = jnp.dtype(target or leaves[0].dtype)
    _write_shards(directory, shards)
    _write_config(directory, cfg, architecture, stored, updates)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _check_params(model: CausalLM, params: Params) -> list[Any]:
    """The leaves of `params`, after checking they are plain arrays of the model's shapes."""
    expected = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_flatten_with_path(
            model.param_shapes(), is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    }
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, LinearLeaf)
    )[0]
    for keypath, leaf in flat:
        name = jax.tree_util.keystr(keypath)
        if isinstance(leaf, LinearLeaf):
            raise CheckpointError(
                f"save() needs plain weights, but params{name} is a {type(leaf).__name__} "
                "(an adapter or quantized leaf): call jaxtune.peft.merge(params) (and "
                "quant.dequantize) first, or save the adapter alone with "
                "jaxtune.peft.save_adapter."
            )
        if not isinstance(leaf, jax.Array | np.ndarray):
            raise CheckpointError(
                f"save(): params{name} is a {type(leaf).__name__}, not an array; params must "
                "hold only jax or numpy arrays"
            )
        if name not in expected:
            raise CheckpointError(f"save(): params{name} is not a parameter of this model")
        if tuple(leaf.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"save(): params{name} has shape {tuple(leaf.shape)}, but the model's config "
                f"implies {tuple(expected[name])}"
            )
    missing = sorted(set(expected) - {jax.tree_util.keystr(k) for k, _ in flat})
    if missing:
        raise CheckpointError(f"save(): params lack {len(missing)} leaves, e.g. {missing[:3]}")
    return [leaf for _, leaf in flat]


def _write_shards(directory: Path, shards: list[dict[str, np.ndarray]]) -> None:
    meta = {"format": "pt"}
    for old in directory.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        write_safetensors(directory / "model.safetensors", shards[0], meta)
        return
    n = len(shards)
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(directory / name, shard, meta)
        weight_map.update({k: name for k in shard})
        total += sum(a.nbytes for a in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _classifier_state(state, head: dict[str, Any]):
    """The backbone's tensors without the LM head, then `score.weight` [num_labels, D]."""
    if "bias" in head:
        raise CheckpointError(
            "a sequence-classification checkpoint's score layer has no bias (transformers' "
            "*ForSequenceClassification); train the reward head without one"
        )
    for name, arr in state:
        if name != "lm_head.weight":
            yield name, arr
    kernel = np.asarray(jax.device_get(head["kernel"]))
    yield "score.weight", np.ascontiguousarray(kernel.T)


def classifier_architecture(causal_lm: str) -> str:
    """LlamaForCausalLM -> LlamaForSequenceClassification (GPT2LMHeadModel -> GPT2For...)."""
    for suffix in ("ForCausalLM", "LMHeadModel"):
        if causal_lm.endswith(suffix):
            return causal_lm[: -len(suffix)] + "ForSequenceClassification"
    raise CheckpointError(f"{causal_lm}: no sequence-classification class is known for it")


def classifier_config(cfg: ModelConfig, tokenizer: Any = None) -> dict[str, Any]:
    """config.json keys of a one-label classifier: num_labels 1 (id2label) and pad_token_id (the
    tokenizer's pad token, else the model's, else its eos token)."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = cfg.pad_token_id
    if pad is None:
        pad = cfg.eos_token_ids[0] if cfg.eos_token_ids else None
    if pad is None:
        raise CheckpointError(
            "a reward model export needs a pad token id (transformers scores the last token "
            "that is not padding): give the tokenizer a pad token"
        )
    return {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "pad_token_id": int(pad)}


def _write_config(
    directory: Path,
    cfg: ModelConfig,
    architecture: str,
    dtype: np.dtype,
    updates: dict[str, Any] | None = None,
) -> None:
    hf = dict(cfg.hf_config)
    hf.update(updates or {})
    hf["architectures"] = [architecture]
    hf.setdefault("model_type", cfg.family)
    hf["torch_dtype"] = hf["dtype"] = str(np.dtype(dtype).name)
    tmp = directory / ".config.json.tmp"
    tmp.write_text(json.dumps(hf, indent=2, sort_keys=True))
    os.replace(tmp, directory / "config.json")
