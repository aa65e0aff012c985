"""Reference log-probs on disk: computed once per pair, reused on resume and by later runs.

    cache = RefCache.open(directory, model_key(config))
    values = cache.get(unit_keys(batch, prefixes))      # None where a unit was never seen
    cache.put(keys, values)                              # appended to the file at once

A file `<directory>/<model key>.bin` belongs to one reference model: the key hashes what decides
the reference's outputs (the model files' names, sizes and dates, config.json, dtypes,
quantization, the PEFT settings that change the base). Each record is one unit (a pair of
DPO, a row of KTO): a hash of its tokens (ids, completion mask and positions of every sequence
of the unit), then its float32 values. Appending one record per unit keeps the file valid after
a crash; a torn last record is ignored when reading.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIGEST = 16
HEADER = struct.Struct("<16sH")  # digest, number of float32 values


def _file_facts(path: Path) -> list[Any]:
    if path.is_file():
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        config = path / "config.json"
        text = config.read_text() if config.exists() else ""
        return [text] + [_file_facts(p) for p in files]
    return [str(path)]


def model_key(config: Any) -> str:
    """A hash of everything that decides the reference model's log-probs (module docstring)."""
    from jaxtune.train.build import model_path

    path = Path(model_path(config)).expanduser()
    peft = config.peft
    facts = {
        "model": str(path.resolve()) if path.exists() else str(path),
        "files": _file_facts(path),
        "dtype": [config.model.dtype, config.model.compute_dtype, config.optim.mixed_precision],
        "quant": config.quant.to_dict(),
        "peft": [peft.method, peft.init, peft.rank, peft.pissa_niter, peft.targets]
        if peft.init == "pissa"
        else [],
    }
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def unit_digest(arrays: Sequence[np.ndarray]) -> bytes:
    """The key of one unit: a hash of its token arrays (each cut to the unit's tokens)."""
    h = hashlib.blake2b(digest_size=DIGEST)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + struct.pack("<q", a.size))
        h.update(a.tobytes())
    return h.digest()


class RefCache:
    """Unit digest -> float32 values, loaded from and appended to one file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values: dict[bytes, np.ndarray] = {}
        if self.path.exists():
            self._read()

    @classmethod
    def open(cls, directory: str | Path, key: str) -> RefCache:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / f"{key}.bin")

    def _read(self) -> None:
        data = self.path.read_bytes()
        offset = 0
        while offset + HEADER.size <= len(data):
            digest, n = HEADER.unpack_from(data, offset)
            end = offset + HEADER.size + 4 * n
            if end > len(data):
                break  # a torn last record
            self.values[digest] = np.frombuffer(data, "<f4", n, offset + HEADER.size).copy()
            offset = end

    def __len__(self) -> int:
        return len(self.values)

    def get(self, digests: Sequence[bytes]) -> list[np.ndarray | None]:
        return [self.values.get(d) for d in digests]

    def put(self, digests: Sequence[bytes], values: Sequence[np.ndarray]) -> None:
        """Store (and append to the file) the units not stored yet."""
        records = []
        for d, v in zip(digests, values, strict=True):
            if d in self.values:
                continue
            v = np.asarray(v, "<f4").reshape(-1)
            self.values[d] = v
            records.append(HEADER.pack(d, v.size) + v.tobytes())
        if records:
            with open(self.path, "ab") as f:
                f.write(b"".join(records))
