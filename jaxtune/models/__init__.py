"""Functional decoders that load from and save to Hugging Face checkpoints.

model, params = jaxtune.models.load("path/or/org/name")   # or a .gguf file
logits = model.apply(params, input_ids)                   # [B, T, V], pure
jaxtune.models.save("out/", model, params)                # transformers loads it back
model, params, head = jaxtune.models.load_reward_model("exported/rm")   # a reward model
rewards = jaxtune.models.score(model, params, head, input_ids, mask)   # [B]
"""

from jaxtune.models.config import ModelConfig, RopeConfig
from jaxtune.models.decoder import CausalLM, param_shapes
from jaxtune.models.families import supported_model_types
from jaxtune.models.layers import LinearLeaf, linear
from jaxtune.models.load import load, load_config
from jaxtune.models.reward_model import load_reward_model, score
from jaxtune.models.save import save
from jaxtune.models.tokenizer import load_tokenizer

__all__ = [
    "CausalLM",
    "LinearLeaf",
    "ModelConfig",
    "RopeConfig",
    "linear",
    "load",
    "load_config",
    "load_reward_model",
    "load_tokenizer",
    "param_shapes",
    "save",
    "score",
    "supported_model_types",
]
