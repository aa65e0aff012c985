"""Tokenizers (with their chat templates) from the same place as the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxtune.errors import CheckpointError
from jaxtune.models.load import resolve


def load_tokenizer(path_or_id: str | Path, revision: str | None = None) -> Any:
    """A transformers tokenizer from a checkpoint directory, a .gguf file, or a hub id."""
    from transformers import AutoTokenizer

    location = resolve(path_or_id, revision)
    try:
        if location.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(location.parent), gguf_file=location.name)
        return AutoTokenizer.from_pretrained(str(location))
    except (OSError, ValueError, KeyError) as e:  # KeyError: a GGUF without tokenizer metadata
        raise CheckpointError(
            f"{location}: could not load a tokenizer ({type(e).__name__}: {e})"
        ) from None
