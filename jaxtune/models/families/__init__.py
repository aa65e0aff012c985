"""Model families: each declares how its `config.json` and weight names differ from the decoder's.

A family is a `Family` record: the transformers `model_type`s it reads, a function
`config.json -> ModelConfig`, and a short table from decoder module paths to HF module names.
"""

from __future__ import annotations

from jaxtune.errors import CheckpointError
from jaxtune.models.families.base import Family, WeightRule
from jaxtune.models.families.gemma import GEMMA, GEMMA2, GEMMA3
from jaxtune.models.families.gpt2 import GPT2
from jaxtune.models.families.llama import LLAMA, MISTRAL, QWEN2, QWEN3
from jaxtune.models.families.phi3 import PHI3

FAMILIES: dict[str, Family] = {
    f.model_type: f for f in (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, GEMMA2, GEMMA3, GPT2, PHI3)
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family_for(model_type: str | None, source: str = "config.json") -> Family:
    """The family of a transformers `model_type`, or a clear error listing the supported ones."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise CheckpointError(
        f"{source}: model_type {model_type!r} is not supported by jaxtune. "
        f"Supported model types: {', '.join(supported_model_types())}."
    )


__all__ = ["FAMILIES", "Family", "WeightRule", "family_for", "supported_model_types"]
