"""Parent side of the multi-device sharding tests: run the workers in fresh processes.

The XLA CPU device count is fixed when jax starts, so every multi-device run is a subprocess
(`tests/sharding_worker.py`, `tests/xla_bug_worker.py`). Results of the single-process runs are
kept for the pytest session, so the topology and multi-host tests share one reference run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SINGLE_MESHES = ("ref=1,1,1", "dp=8,1,1:dp", "fsdp=1,8,1:fsdp", "fsdp_tp=2,2,2:fsdp_tp")


def env() -> dict[str, str]:
    """The environment of a worker: repo on the path, the tests' compilation cache."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    out.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    out.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return out


def run(module: str, *args: str, timeout: int = 300) -> None:
    """`python -m module args...`; raises with the worker's output tail if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def start(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def single_process_results(base: Path) -> dict[str, np.ndarray]:
    """Final params/losses of SINGLE_MESHES in one 8-device process (run once per session)."""
    out = base / "sharding_single.npz"
    if not out.exists():
        meshes = [a for m in SINGLE_MESHES for a in ("--mesh", m)]
        run("tests.sharding_worker", "--devices", "8", "--out", str(out), *meshes)
    with np.load(out) as data:
        return dict(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arrays(results: dict[str, np.ndarray], run_name: str) -> dict[str, np.ndarray]:
    """The param arrays (by path) of one named run."""
    prefix = f"{run_name}|"
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}
