"""The data section of a run's config: one frozen dataclass, built from a dict or a ConfigDict.

    data = DataConfig.from_mapping({"train": "jaxtune/data/sets/instruct.jsonl", "cutoff_len": 512})

`default_config()` gives the same keys as an `ml_collections.ConfigDict` for `configs/*.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtune.data.errors import DataError

FORMATS = ("auto", "text", "alpaca", "sharegpt", "messages", "preference", "kto", "prompt")
TRUNCATION = ("error", "drop", "truncate")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One dataset: a local file or folder (json, jsonl, parquet, csv) or a hub id."""

    path: str
    format: str = "auto"
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    split: str = "train"
    name: str | None = None  # hub dataset configuration
    weight: float | None = None
    max_rows: int | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to turn it into batches (see the module docstring of jaxtune.data).

    train / eval: a path or hub id, a comma-separated list of them, or a list of paths or of
      dicts with SourceSpec's keys (path, format, columns, split, name, weight, max_rows).
    format: how rows are read (FORMATS); "auto" guesses from the column names.
    columns: canonical name -> column name (LlamaFactory's dataset_info "columns" and "tags").
    template: None = the tokenizer's own chat template; a built-in name (see templates.BUILTIN);
      or a jinja string.
    system: a system prompt added to conversations that have none (None: leave as is).
    cutoff_len: the most tokens of one example (a pair member for preference data); None = the
      row length of the batches.
    packing: several examples per row (segment_ids / positions keep them apart).
    train_on_prompt: learn every token, not only the assistant turns.
    mask_history: learn only the last assistant turn of a conversation.
    truncation: a row longer than cutoff_len is an "error", is "drop"ped, or is "truncate"d
      (the end is cut; prompts for rollouts keep their end).
    skip_bad_rows: skip malformed rows with one warning of counts instead of raising.
    seed: shuffling and mixing; the same seed gives the same batches.
    mix_weights: sampling weights of the train sources (None: concatenate them).
    streaming: read the sources lazily (datasets' streaming mode) instead of preparing them first.
    shuffle: shuffle the train stream (eval is never shuffled).
    """

    train: tuple[SourceSpec, ...] = ()
    eval: tuple[SourceSpec, ...] = ()
    format: str = "auto"
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    cutoff_len: int | None = None
    packing: bool = False
    train_on_prompt: bool = False
    mask_history: bool = False
    truncation: str = "error"
    skip_bad_rows: bool = False
    seed: int = 0
    mix_weights: tuple[float, ...] | None = None
    streaming: bool = False
    shuffle: bool = True
    shuffle_buffer: int = 10_000

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | DataConfig) -> DataConfig:
        """Build from a dict or ConfigDict; unknown keys are errors that suggest the nearest key."""
        if isinstance(mapping, DataConfig):
            return mapping
        values = dict(mapping.to_dict() if hasattr(mapping, "to_dict") else mapping)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean data.{near[0]}?" if near else f" Known keys: {known}."
                raise DataError(f"Unknown data config key data.{key}.{hint}")
        fmt = values.get("format", "auto")
        columns = dict(values.get("columns") or {})
        for split in ("train", "eval"):
            values[split] = parse_sources(values.get(split), fmt, columns)
        weights = values.get("mix_weights")
        values["mix_weights"] = tuple(float(w) for w in weights) if weights else None
        values["columns"] = columns
        for key in ("template", "system", "cutoff_len"):  # ConfigDict placeholders: "" and 0
            if key in values and not values[key]:
                values[key] = None
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise DataError for settings that cannot work together."""
        for spec in self.train + self.eval:
            if spec.format not in FORMATS:
                raise DataError(f"{spec.path}: unknown format {spec.format!r}; one of {FORMATS}.")
        if self.truncation not in TRUNCATION:
            raise DataError(f"data.truncation={self.truncation!r}: one of {TRUNCATION}.")
        if self.mix_weights is not None:
            if len(self.mix_weights) != len(self.train):
                raise DataError(
                    f"data.mix_weights has {len(self.mix_weights)} weights for "
                    f"{len(self.train)} train sources; give one weight per source."
                )
            if min(self.mix_weights) < 0 or sum(self.mix_weights) <= 0:
                raise DataError("data.mix_weights must be >= 0 with a positive sum.")
        if self.cutoff_len is not None and self.cutoff_len < 2:
            raise DataError(f"data.cutoff_len={self.cutoff_len} is too small (at least 2).")

    def weights(self) -> tuple[float, ...] | None:
        """Mixing weights of the train sources: data.mix_weights, or per-source `weight`s."""
        if self.mix_weights is not None:
            return self.mix_weights
        per_source = [s.weight for s in self.train]
        if any(w is not None for w in per_source):
            return tuple(1.0 if w is None else float(w) for w in per_source)
        return None


def parse_sources(value: Any, fmt: str, columns: Mapping[str, str]) -> tuple[SourceSpec, ...]:
    """Paths, comma-separated paths, or dicts -> SourceSpecs (inheriting format and columns)."""
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (Mapping, SourceSpec)):
        value = [value]
    if not isinstance(value, Sequence):
        raise DataError(f"data sources must be paths or dicts, got {type(value).__name__}.")
    specs = []
    known = [f.name for f in dataclasses.fields(SourceSpec)]
    for item in value:
        if isinstance(item, SourceSpec):
            specs.append(item)
            continue
        if isinstance(item, str):
            item = {"path": item}
        item = dict(item.to_dict() if hasattr(item, "to_dict") else item)
        unknown = [k for k in item if k not in known]
        if unknown or "path" not in item:
            raise DataError(f"data source {item}: keys are {known} (path is required).")
        item.setdefault("format", fmt)
        item["columns"] = {**columns, **dict(item.get("columns") or {})}
        specs.append(SourceSpec(**item))
    return tuple(specs)


def default_config():
    """The data keys with their defaults, as an ml_collections.ConfigDict for configs/*.py."""
    import ml_collections

    defaults = DataConfig()
    values = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(DataConfig)}
    values.update(train="", eval="", columns={}, template="", system="", cutoff_len=0)
    values["mix_weights"] = ()
    config = ml_collections.ConfigDict(values)
    return config
