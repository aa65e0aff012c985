"""The device mesh: axes ("data", "fsdp", "tensor"), shaped from config.

    config.sharding.topology = "fsdp_tp"   # dp | fsdp | fsdp_tp (see rules.py)
    config.sharding.data = 1               # sizes of the three mesh axes; one may be -1,
    config.sharding.fsdp = -1              # meaning "all remaining devices"
    config.sharding.tensor = 1

    mesh = make_mesh(config.sharding)      # jax.sharding.Mesh over jax.devices()

A single device is a (1, 1, 1) mesh: there is no second code path. On a multi-host run call
`jaxtune.sharding.distributed.initialize` first, so that `jax.devices()` lists every host's chips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import AxisType, Mesh

from jaxtune.sharding.rules import (
    BASE_RULES,
    MESH_AXES,
    Rules,
    ShardingConfigError,
    rules_for,
)

DEFAULT_RULE = "default"  # a config.sharding.rules value meaning "keep the topology's rule"


def default_config() -> ml_collections.ConfigDict:
    """The `sharding` section of a jaxtune config, with every knob at its default."""
    cfg = ml_collections.ConfigDict()
    cfg.topology = "fsdp_tp"
    cfg.data = 1
    cfg.fsdp = -1
    cfg.tensor = 1
    # Per logical axis: "default" (the topology's), "" (replicated), "fsdp" or "fsdp,data".
    cfg.rules = ml_collections.ConfigDict({name: DEFAULT_RULE for name, _ in BASE_RULES})
    return cfg


def mesh_shape(cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes from config, with one -1 filled in to use every device."""
    cfg = _section(cfg)
    sizes = [int(_get(cfg, axis, -1 if axis == "fsdp" else 1)) for axis in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ShardingConfigError(
            f"sharding data/fsdp/tensor = {tuple(sizes)}: give positive sizes, at most one -1"
        )
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % known:
            raise ShardingConfigError(
                f"sharding data/fsdp/tensor = {tuple(sizes)}: {num_devices} devices are not a "
                f"multiple of {known}; change the fixed sizes"
            )
        sizes[free[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ShardingConfigError(
            f"sharding data/fsdp/tensor = {tuple(sizes)} needs {math.prod(sizes)} devices but "
            f"{num_devices} are present; set one size to -1 to use all of them"
        )
    return sizes[0], sizes[1], sizes[2]


def make_mesh(cfg: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all of them) shaped by `cfg` (see `default_config`).

    `cfg` is the `sharding` section (a ConfigDict or a mapping), a whole config holding one,
    a (data, fsdp, tensor) tuple, or None (every device on "fsdp").
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_from_config(cfg: Any = None) -> Rules:
    """The rule table of a config's `sharding` section (topology plus per-axis overrides)."""
    section = _section(cfg)
    overrides = {}
    for name, value in dict(_get(section, "rules", {}) or {}).items():
        if value == DEFAULT_RULE:
            continue
        overrides[name] = _parse_axes(value)
    return rules_for(str(_get(section, "topology", "fsdp_tp")), overrides)


def _parse_axes(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("+", ",").split(",") if p.strip()]
        if not parts or parts == ["none"]:
            return None
        return parts[0] if len(parts) == 1 else tuple(parts)
    return value


def _section(cfg: Any) -> Any:
    if cfg is None:
        return {}
    if isinstance(cfg, Sequence) and not isinstance(cfg, str):
        return dict(zip(MESH_AXES, cfg, strict=True))
    inner = _get(cfg, "sharding", None)
    return cfg if inner is None else inner


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)
