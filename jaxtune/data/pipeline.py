"""Entry points the train loop calls: config + tokenizer -> a `BatchIterator` per stage.

    make_lm_batches(config, tokenizer, batch_size=8, seq_len=512)          pt / sft
    make_preference_batches(config, tokenizer, batch_size=8, seq_len=512)  rm / dpo family
    make_kto_batches(config, tokenizer, batch_size=8, seq_len=512)         kto
    make_prompt_batches(config, tokenizer, batch_size=8, prompt_len=256)   ppo / grpo

`config` is a DataConfig, a dict or a ConfigDict (see jaxtune.data.config); split="eval" reads
data.eval in one pass, in file order, with the last batch padded. batch_size is global: this
host gets batch_size // host_count rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxtune.data.batches import ASSEMBLERS
from jaxtune.data.config import DataConfig, SourceSpec
from jaxtune.data.errors import DataError, RowStats
from jaxtune.data.examples import Example, MaskOptions
from jaxtune.data.iterator import BatchIterator
from jaxtune.data.sources import (
    Preparation,
    iter_chunks,
    open_dataset,
    prepare,
    process_chunk,
    source_format,
)
from jaxtune.data.streams import IndexedSource, Mixture, StreamedSource
from jaxtune.data.templates import resolve_template

STAGE_KINDS = {
    "pt": "lm",
    "sft": "lm",
    "lm": "lm",
    "rm": "pair",
    "dpo": "pair",
    "orpo": "pair",
    "simpo": "pair",
    "pair": "pair",
    "preference": "pair",
    "kto": "unpaired",
    "unpaired": "unpaired",
    "ppo": "prompt",
    "grpo": "prompt",
    "prompt": "prompt",
}


def make_batches(
    config: DataConfig | Mapping[str, Any],
    tokenizer: Any,
    *,
    stage: str,
    batch_size: int,
    seq_len: int,
    split: str = "train",
    host_index: int | None = None,
    host_count: int | None = None,
) -> BatchIterator:
    """A BatchIterator for `stage` (pt, sft, rm, dpo, orpo, simpo, kto, ppo, grpo)."""
    config = DataConfig.from_mapping(config)
    if stage not in STAGE_KINDS:
        raise DataError(f"unknown stage {stage!r}; one of {sorted(STAGE_KINDS)}")
    kind = STAGE_KINDS[stage]
    host_index, host_count = _hosts(host_index, host_count)
    if batch_size % host_count:
        raise DataError(f"batch_size={batch_size} does not split over {host_count} hosts")
    specs = config.train if split == "train" else config.eval
    if not specs:
        raise DataError(f"data.{split} is empty: give a dataset path")
    cutoff = config.cutoff_len or seq_len
    if cutoff > seq_len:
        raise DataError(f"data.cutoff_len={cutoff} is longer than the rows ({seq_len} tokens)")
    packing = config.packing and kind in ("lm", "pair")
    if config.packing and not packing:
        raise DataError(
            f"data.packing is not supported for the {stage} stage (one example per row)"
        )
    prep = Preparation(
        kind=kind,
        tokenizer=tokenizer,
        template=_template(tokenizer, config.template),
        options=MaskOptions(config.train_on_prompt, config.mask_history),
        cutoff=cutoff,
        truncation=config.truncation,
        skip_bad_rows=config.skip_bad_rows,
    )
    training = split == "train"
    local = batch_size // host_count
    if config.streaming:
        stream = _streamed(specs, prep, config, training, host_index, host_count)
        rows, host_rows = local, slice(0, local)
    else:
        stream = _indexed(specs, prep, config, training)
        rows, host_rows = batch_size, slice(host_index * local, (host_index + 1) * local)
    fingerprint = {
        "stage_kind": kind,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "packing": packing,
        "seed": config.seed,
        "sources": [s.path for s in specs],
        "weights": list(config.weights() or []),
        "streaming": config.streaming,
    }
    if config.streaming:
        fingerprint["host"] = [host_index, host_count]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return BatchIterator(
        stream,
        ASSEMBLERS[kind],
        rows=rows,
        seq_len=seq_len,
        packing=packing,
        host_rows=host_rows,
        pad_id=pad_id,
        fingerprint=fingerprint,
    )


def make_lm_batches(
    config, tokenizer, *, batch_size: int, seq_len: int, split: str = "train", **hosts
) -> BatchIterator:
    """Pretraining / SFT batches: input_ids, targets, loss_mask, segment_ids, positions [B, T]."""
    return make_batches(
        config, tokenizer, stage="sft", batch_size=batch_size, seq_len=seq_len, split=split, **hosts
    )


def make_preference_batches(
    config, tokenizer, *, batch_size: int, seq_len: int, split: str = "train", **hosts
) -> BatchIterator:
    """Pair batches: chosen_* and rejected_* LM keys [B, T]."""
    return make_batches(
        config, tokenizer, stage="dpo", batch_size=batch_size, seq_len=seq_len, split=split, **hosts
    )


def make_kto_batches(
    config, tokenizer, *, batch_size: int, seq_len: int, split: str = "train", **hosts
) -> BatchIterator:
    """KTO batches: LM keys, kto_label [B], and kl_* LM keys [B, T]."""
    return make_batches(
        config, tokenizer, stage="kto", batch_size=batch_size, seq_len=seq_len, split=split, **hosts
    )


def make_prompt_batches(
    config, tokenizer, *, batch_size: int, prompt_len: int, split: str = "train", **hosts
) -> BatchIterator:
    """Rollout prompts: prompt_ids, prompt_mask [B, P] left-padded (+ answer [B] when given)."""
    return make_batches(
        config,
        tokenizer,
        stage="ppo",
        batch_size=batch_size,
        seq_len=prompt_len,
        split=split,
        **hosts,
    )


def _hosts(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise DataError(f"host_index={index} is outside 0..{count - 1}")
    return index, count


def _template(tokenizer: Any, template: str | None):
    try:
        return resolve_template(tokenizer, template)
    except DataError:
        if template is not None:
            raise
        return None  # no chat template: fine for plain text, an error at the first conversation


def _indexed(specs, prep: Preparation, config: DataConfig, training: bool):
    prepared = [prepare(spec, prep)[0] for spec in specs]
    shuffle = training and config.shuffle
    weights = config.weights() if training else None
    if weights is None:
        pooled: list[Example] = [e for examples in prepared for e in examples]
        return IndexedSource(pooled, config.seed, shuffle, repeat=training)
    sources = [
        IndexedSource(ex, config.seed, shuffle, True, salt=i + 1) for i, ex in enumerate(prepared)
    ]
    return Mixture(sources, weights, config.seed)


def _streamed(specs, prep: Preparation, config: DataConfig, training: bool, host: int, hosts: int):
    from datasets.distributed import split_dataset_by_node

    sources = []
    for i, spec in enumerate(specs):
        dataset = open_dataset(spec, streaming=True)
        if hosts > 1:
            dataset = split_dataset_by_node(dataset, rank=host, world_size=hosts)
        if training and config.shuffle:
            dataset = dataset.shuffle(seed=config.seed + i, buffer_size=config.shuffle_buffer)
        sources.append(
            StreamedSource(_epoch_reader(dataset, spec, prep), repeat=training, name=spec.path)
        )
    if len(sources) == 1:
        return sources[0]
    weights = config.weights() or [1.0] * len(sources)
    return Mixture(sources, weights, config.seed)


def _epoch_reader(dataset: Any, spec: SourceSpec, prep: Preparation):
    def read(epoch: int, first_row: int):
        data = dataset.skip(first_row) if first_row else dataset
        data.set_epoch(epoch)  # after skip: skip() starts again from epoch 0's order
        fmt = None
        stats = RowStats(f"{spec.path} (streamed, epoch {epoch})")
        for first, rows in iter_chunks(data, first_row):
            fmt = fmt or source_format(spec, list(rows[0]))
            for k, examples in enumerate(process_chunk(rows, first, spec, fmt, prep, stats)):
                yield first + k, examples
        stats.warn()

    return read
