"""int4 (NF4, FP4) and int8 weight quantization as param leaves, for QLoRA and cheap inference.

params = jaxtune.quant.quantize(params, targets="all-linear", method="nf4")
params = jaxtune.peft.lora(params, ...)              # QLoRA: adapters over the quantized base
model, params = jaxtune.quant.load_quantized(path)   # quantize while loading, layer by layer
jaxtune.quant.export_merged("out/", model, params)   # adapters merged, bf16 HF safetensors
"""

from jaxtune.quant.errors import QuantizationError
from jaxtune.quant.export import export_merged, merged_params
from jaxtune.quant.leaf import QuantizedWeight, is_quantized
from jaxtune.quant.load import load_quantized
from jaxtune.quant.transform import QuantSpec, default_compute_dtype, dequantize, quantize

__all__ = [
    "QuantSpec",
    "QuantizationError",
    "QuantizedWeight",
    "default_compute_dtype",
    "dequantize",
    "export_merged",
    "is_quantized",
    "load_quantized",
    "merged_params",
    "quantize",
]
