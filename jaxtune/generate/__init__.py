"""Text generation with a KV cache: prefill once, decode inside one compiled loop.

out = jaxtune.generate.generate(model, params, prompt_ids, prompt_mask, max_new_tokens=64)
texts = jaxtune.generate.generate_text(model, params, tokenizer, ["Hi!"], max_new_tokens=64)
"""

from jaxtune.generate.decode import GenerationOutput, generate
from jaxtune.generate.prompts import bucket_length, left_pad
from jaxtune.generate.sampling import (
    SamplingConfig,
    sample,
    top_k_filter,
    top_p_filter,
    warp,
)
from jaxtune.generate.text import encode_prompt, generate_text

__all__ = [
    "GenerationOutput",
    "SamplingConfig",
    "bucket_length",
    "encode_prompt",
    "generate",
    "generate_text",
    "left_pad",
    "sample",
    "top_k_filter",
    "top_p_filter",
    "warp",
]
