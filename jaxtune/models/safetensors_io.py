"""Safetensors read (memory-mapped, one tensor at a time) and atomic write, bf16 included.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw bytes. Reading it ourselves gives zero-copy numpy views for every
dtype (numpy has no bf16; ml_dtypes does) and precise errors on corrupt files.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxtune.errors import CheckpointError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read as what it claims to be."""


class SafetensorsFile(Mapping[str, np.ndarray]):
    """A read-only mapping name -> memory-mapped array over one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptCheckpointError(f"{self.path}: not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(MAX_HEADER, size - 8):
                raise CorruptCheckpointError(
                    f"{self.path}: corrupt safetensors header (length {header_len}, file size "
                    f"{size}); the file is truncated or not safetensors. Download it again."
                )
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorruptCheckpointError(
                    f"{self.path}: corrupt safetensors header ({e}). Download the file again."
                ) from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self._entries = header
        data_size = size - self._data_start
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {name!r} has dtype {e.get('dtype')!r}, which jaxtune "
                    f"cannot read (supported: {', '.join(DTYPES)})"
                )
            begin, end = e["data_offsets"]
            expected = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
            if end - begin != expected or end > data_size:
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {name!r} claims bytes [{begin}, {end}) but the file "
                    f"holds {data_size} data bytes (shape {e['shape']}); the file is truncated "
                    "or corrupt. Download it again."
                )
        self._mmap: np.memmap | None = None

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        return self._mmap

    def __getitem__(self, name: str) -> np.ndarray:
        e = self._entries[name]
        begin, end = e["data_offsets"]
        if begin == end:
            return np.zeros(e["shape"], DTYPES[e["dtype"]])
        return self._buffer()[begin:end].view(DTYPES[e["dtype"]]).reshape(e["shape"])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors to `path` atomically (a temporary file renamed into place)."""
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = {}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in NAMES:
            raise TypeError(f"cannot write tensor {name!r} of dtype {arr.dtype} to safetensors")
        header[name] = {
            "dtype": NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays[name] = arr
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays.values():
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
