"""Convert checkpoints into Hugging Face safetensors directories that jaxtune and transformers load.

  python scripts/convert_checkpoint.py gguf MODEL.gguf OUT_DIR [--dtype bfloat16]
      GGUF (llama.cpp) -> config.json + model.safetensors + tokenizer, dequantized.
  python scripts/convert_checkpoint.py pickle IN_DIR OUT_DIR --trust-pickle
      pytorch_model*.bin -> model*.safetensors (config and tokenizer files copied).

jaxtune itself never unpickles. The pickle route is for files you trust: it uses
`torch.load(weights_only=True)`, which refuses arbitrary objects, but a pickle is still code from
whoever wrote it, hence the explicit flag.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def convert_gguf(gguf_path: Path, out: Path, dtype: str | None = None) -> Path:
    """GGUF -> HF safetensors directory (with the GGUF's tokenizer and chat template)."""
    import jaxtune.models as jm
    from jaxtune.errors import CheckpointError

    model, params = jm.load(gguf_path)
    try:
        tokenizer = jm.load_tokenizer(gguf_path)
    except CheckpointError as e:
        print(f"warning: no tokenizer written ({e})", file=sys.stderr)
        tokenizer = None
    return jm.save(out, model, params, tokenizer, dtype=dtype)


def _to_numpy(tensor) -> np.ndarray:
    import ml_dtypes
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def convert_pickle(src: Path, out: Path) -> Path:
    """`pytorch_model*.bin` (+ index) -> `model*.safetensors` (+ index); other files copied."""
    import torch

    from jaxtune.models.safetensors_io import write_safetensors

    bins = sorted(src.glob("pytorch_model*.bin")) or sorted(src.glob("*.bin"))
    if not bins:
        from jaxtune.errors import CheckpointError

        raise CheckpointError(f"{src}: no *.bin weight files found")
    out.mkdir(parents=True, exist_ok=True)
    renamed = {b.name: _safetensors_name(b.name, len(bins)) for b in bins}
    for b in bins:
        state = torch.load(b, map_location="cpu", weights_only=True)
        arrays = {k: np.ascontiguousarray(_to_numpy(v)) for k, v in state.items()}
        write_safetensors(out / renamed[b.name], arrays, {"format": "pt"})
        print(f"{b.name} -> {renamed[b.name]} ({len(arrays)} tensors)")
    index = src / "pytorch_model.bin.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: renamed[v] for k, v in data["weight_map"].items()}
        (out / "model.safetensors.index.json").write_text(json.dumps(data, indent=2))
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f != index:
            shutil.copy(f, out / f.name)
    return out


def _safetensors_name(bin_name: str, count: int) -> str:
    if count == 1:
        return "model.safetensors"
    return bin_name.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("gguf", help="GGUF file -> HF safetensors directory")
    g.add_argument("src", type=Path)
    g.add_argument("out", type=Path)
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p = sub.add_parser("pickle", help="pytorch_model*.bin directory -> safetensors directory")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--trust-pickle", action="store_true", help="I trust who wrote these files")
    args = parser.parse_args(argv)
    if args.kind == "pickle" and not args.trust_pickle:
        parser.error("pickle files can run code when loaded: pass --trust-pickle if you trust them")

    from jaxtune.errors import UserError

    try:
        if args.kind == "gguf":
            out = convert_gguf(args.src, args.out, args.dtype)
        else:
            out = convert_pickle(args.src, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
