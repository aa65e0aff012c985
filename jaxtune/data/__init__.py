"""Datasets -> tokenized, masked, packed numpy batches for every stage.

    from jaxtune.data import make_lm_batches
    it = make_lm_batches({"train": "jaxtune/data/sets/instruct.jsonl", "packing": True},
                         tokenizer, batch_size=8, seq_len=512)
    batch = next(it); state = it.state(); ...; it.restore(state)

Pipeline: sources (datasets.load_dataset) -> formats (one record per row) -> templates (jinja,
sandboxed) -> tokenize (assistant spans, prefix by prefix) -> masks -> examples (cut-off) ->
streams (seeded order, mixing) -> packing -> batches (the batch contract) -> iterator (state).
"""

from jaxtune.data.config import DataConfig, SourceSpec, default_config
from jaxtune.data.errors import DataError, DataWarning, TemplateBreaksPrefix
from jaxtune.data.iterator import BatchIterator
from jaxtune.data.pipeline import (
    make_batches,
    make_kto_batches,
    make_lm_batches,
    make_preference_batches,
    make_prompt_batches,
)
from jaxtune.data.sets import SETS, set_path
from jaxtune.data.templates import BUILTIN, ChatTemplate, resolve_template

__all__ = [
    "BUILTIN",
    "SETS",
    "BatchIterator",
    "ChatTemplate",
    "DataConfig",
    "DataError",
    "DataWarning",
    "SourceSpec",
    "TemplateBreaksPrefix",
    "default_config",
    "make_batches",
    "make_kto_batches",
    "make_lm_batches",
    "make_preference_batches",
    "make_prompt_batches",
    "resolve_template",
    "set_path",
]
