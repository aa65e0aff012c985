"""Multi-host runs: one process per host (a TPU VM worker, a GPU node), joined by jax.distributed.

    distributed.initialize(config.distributed)   # first, before anything touches jax devices
    mesh = make_mesh(config.sharding)            # now spans every host's devices
    rows = distributed.process_rows(batch_sharding(mesh, rules), global_batch_size)
    ...                                          # this process loads only those rows
    batch = distributed.global_batch(local_rows, batch_sharding(mesh, rules), global_batch_size)
    if distributed.is_main(): write logs, export, push

How the job is joined (`initialize`), first match wins:
1. an explicit coordinator: `config.distributed.coordinator_address` ("host:port" of process 0)
   with `num_processes` and `process_id`, or the environment variables
   JAXTUNE_COORDINATOR_ADDRESS, JAXTUNE_NUM_PROCESSES, JAXTUNE_PROCESS_ID (GPU clusters);
2. a detected cluster: a Cloud TPU VM (TPU pods: every worker runs the same command, see
   scripts/launch_tpu_pod.sh), a SLURM job with more than one task, an Open MPI job with more than
   one rank: `jax.distributed.initialize()` reads the rest from the environment;
3. otherwise a single process: nothing to do.
`config.distributed.mode = "off"` skips all of it; "auto" (the default) does the above.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from jaxtune.sharding.rules import ShardingConfigError

T = TypeVar("T")
ENV_PREFIX = "JAXTUNE_"


def default_config() -> ml_collections.ConfigDict:
    """The `distributed` section of a jaxtune config."""
    cfg = ml_collections.ConfigDict()
    cfg.mode = "auto"  # auto | off
    cfg.coordinator_address = ""  # "host:port" of process 0; "" = from env or detected
    cfg.num_processes = 0  # 0 = from env or detected
    cfg.process_id = -1  # -1 = from env or detected
    cfg.local_device_ids = ""  # "0,1,2,3": the GPUs this process drives; "" = all visible
    cfg.initialization_timeout = 300  # seconds to wait for every process to join
    return cfg


@dataclasses.dataclass(frozen=True)
class JoinPlan:
    """What `initialize` will do: 'single', 'explicit' or 'detected' (and the explicit args)."""

    how: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    timeout: int = 300


def plan(cfg: Any = None, env: Mapping[str, str] | None = None) -> JoinPlan:
    """Decide how to join the job from config and environment (pure; nothing is started)."""
    env = os.environ if env is None else env
    section = _section(cfg)
    timeout = int(_get(section, "initialization_timeout", 300))
    if str(_get(section, "mode", "auto")) == "off":
        return JoinPlan("single", timeout=timeout)
    address = _get(section, "coordinator_address", "") or env.get(
        f"{ENV_PREFIX}COORDINATOR_ADDRESS", ""
    )
    if address:
        n = int(_get(section, "num_processes", 0) or env.get(f"{ENV_PREFIX}NUM_PROCESSES", 0))
        pid = int(_get(section, "process_id", -1))
        if pid < 0:
            pid = int(env.get(f"{ENV_PREFIX}PROCESS_ID", -1))
        if n <= 0 or not 0 <= pid < n:
            raise ShardingConfigError(
                f"distributed.coordinator_address={address!r} needs num_processes >= 1 and "
                f"0 <= process_id < num_processes (got {n} and {pid}); set them in the config "
                f"or as {ENV_PREFIX}NUM_PROCESSES / {ENV_PREFIX}PROCESS_ID"
            )
        ids = _get(section, "local_device_ids", "") or env.get(f"{ENV_PREFIX}LOCAL_DEVICE_IDS", "")
        local = tuple(int(i) for i in str(ids).split(",") if i.strip()) or None
        return JoinPlan("explicit", address, n, pid, local, timeout)
    if detected_cluster(env):
        return JoinPlan("detected", timeout=timeout)
    return JoinPlan("single", timeout=timeout)


def detected_cluster(env: Mapping[str, str]) -> str | None:
    """'tpu', 'slurm' or 'mpi' when this process is one of several in a known launcher."""
    if _on_tpu_vm(env):
        return "tpu"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", 1))) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        return "mpi"
    return None


def initialize(cfg: Any = None) -> JoinPlan:
    """Join the multi-process job (see the module doc); returns what was done. Idempotent."""
    join = plan(cfg)
    if join.how == "single" or jax.distributed.is_initialized():
        return join
    if join.how == "explicit":
        jax.distributed.initialize(
            coordinator_address=join.coordinator_address,
            num_processes=join.num_processes,
            process_id=join.process_id,
            local_device_ids=list(join.local_device_ids) if join.local_device_ids else None,
            initialization_timeout=join.timeout,
        )
    else:
        jax.distributed.initialize(initialization_timeout=join.timeout)
    return join


# ----------------------------------------------------------------------------- process 0
def is_main() -> bool:
    """True on the process that logs, writes exports and pushes (process 0)."""
    return jax.process_index() == 0


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate a side effect (logging, export) to run on process 0 only; others get None."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather_to_host(tree: Any) -> Any:
    """Every array of a (sharded) tree as a full numpy array on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


# ----------------------------------------------------------------------------- data slices
def process_rows(sharding: Sharding, global_batch_size: int) -> np.ndarray:
    """Sorted global row indices that this process's devices hold: the rows it must load."""
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows: set[int] = set()
    for index in index_map.values():
        rows.update(range(global_batch_size)[index[0]])
    return np.array(sorted(rows), dtype=np.int64)


def global_batch(local: Any, sharding: Sharding, global_batch_size: int) -> Any:
    """Assemble per-process rows (those of `process_rows`, in order) into global jax.Arrays."""

    def one(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(
            sharding, x, (global_batch_size, *x.shape[1:])
        )

    return jax.tree.map(one, local)


# ----------------------------------------------------------------------------- helpers
def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    if env.get("TPU_SKIP_MDS_QUERY") and not env.get("TPU_WORKER_HOSTNAMES"):
        return False
    has_chips = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    return has_chips and importlib.util.find_spec("libtpu") is not None


def _section(cfg: Any) -> Any:
    if cfg is None:
        return {}
    inner = _get(cfg, "distributed", None)
    return cfg if inner is None else inner


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping | ml_collections.ConfigDict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)
