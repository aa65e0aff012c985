"""Reference log-probs for the DPO and KTO stages: inside the step, per batch, or from disk.

    settings = RefSettings.from_config(config, "dpo")      # dpo.reference, dpo.ref_cache_dir
    batches = with_reference(stage, run, batches, current_params)   # Stage.train_batches
                                                                    # (and eval_batches)
    ref = reference_arrays(stage, model, params, batch)     # inside the stage's loss

`reference` = disable: the stage's loss computes the reference log-probs itself on
`peft.disable(params)` (no gradient, no second copy), in training and in eval. copy / cache:
each train and eval batch gets the reference arrays (`stage.ref_keys`, [B, T] per unit
as jaxtune.train.pair_logps lays them out) from a compiled forward pass of the frozen step-0
params (jaxtune.train.reference), or from the on-disk cache (jaxtune.train.ref_cache), which
only calls the model for units it has never seen. The stage provides:
    ref_keys            names of the reference arrays in the batch
    unit_prefixes       the sequences of one unit ("chosen_", "rejected_") / ("", "kl_")
    reference_arrays(model, params, batch, chunk) -> {key: [B, T]}
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtune.errors import UserError
from jaxtune.train import reference as reference_lib

MODES = ("auto", "disable", "copy", "cache")
Params = Any


def default_config() -> dict[str, Any]:
    return dict(
        reference="auto",  # auto | disable (PEFT: adapters off) | copy (frozen step-0 params) |
        # cache (log-probs computed once per pair, kept on disk)
        ref_cache_dir="",  # cache: the directory; "" = <output_dir>/ref_logps
    )


@dataclasses.dataclass(frozen=True)
class RefSettings:
    """mode: disable | copy | cache; params: which params compute them (disable | copy)."""

    mode: str = "disable"
    params: str = "disable"
    cache_dir: str = ""

    @classmethod
    def from_config(cls, config: Any, section: str) -> RefSettings:
        c = config[section]
        mode = str(c.reference)
        if mode not in MODES:
            raise UserError(f"config.{section}.reference={mode!r}: one of {', '.join(MODES)}.")
        method, init = str(config.peft.method), str(config.peft.init)
        try:
            source = reference_lib.resolve_mode("auto" if mode == "cache" else mode, method, init)
        except UserError as e:
            raise UserError(f"config.{section}.{e}") from None
        cache_dir = str(c.ref_cache_dir) or str(Path(config.output_dir) / "ref_logps")
        return cls("cache" if mode == "cache" else source, source, cache_dir)


def reference_arrays(stage: Any, model: Any, params: Params, batch: Mapping) -> dict[str, Any]:
    """The reference arrays of a batch inside the loss: the batch's, or computed on the params
    with adapters off (mode disable)."""
    if all(k in batch for k in stage.ref_keys):
        return {k: batch[k] for k in stage.ref_keys}
    if stage.reference.mode == "disable":
        return stage.reference_arrays(model, reference_lib.disabled(params), batch)
    raise UserError(
        f"{stage.name}.reference={stage.reference.mode!r}: this batch has no reference "
        f"log-probs ({', '.join(stage.ref_keys)}). The loop adds them to train and eval batches "
        f"through the stage's train_batches / eval_batches hooks; a caller that makes its own "
        "batches must wrap them the same way (jaxtune.train.ref_logps.with_reference)."
    )


def with_reference(
    stage: Any, run: Any, batches: Iterator[dict], current_params: Callable[[], Params]
) -> Iterator[dict]:
    """Stage.train_batches of a stage with a reference (see the module docstring)."""
    if stage.reference.mode == "disable":
        return batches
    return ReferenceBatches(stage, run, batches, current_params)


class ReferenceHooks:
    """The loop's batch hooks of a stage with a `reference` setting (DPO, KTO): train and eval
    batches get reference log-probs in the copy / cache modes."""

    def train_batches(
        self, run: Any, batches: Iterator[dict], current_params: Callable[[], Params]
    ) -> Iterator[dict]:
        return with_reference(self, run, batches, current_params)

    def eval_batches(
        self, run: Any, batches: Iterator[dict], current_params: Callable[[], Params]
    ) -> Iterator[dict]:
        return with_reference(self, run, batches, current_params)


def shared_reference(run: Any, current_params: Callable[[], Params], mode: str) -> Params:
    """The reference params of a run, made once and shared by its train and eval batches
    (kept on the run object, so they live as long as the run)."""
    held = run.__dict__.setdefault("_reference_params", {})
    if mode not in held:
        held[mode] = initial_reference(run, current_params(), mode)
    return held[mode]


def _resumed(run: Any) -> bool:
    ckpts = Path(run.config.output_dir) / "checkpoints"
    return (
        bool(run.config.train.resume)
        and ckpts.is_dir()
        and any(p.name.isdigit() for p in ckpts.iterdir())
    )


def initial_reference(run: Any, current: Params, mode: str) -> Params:
    """The reference params: adapters off, or the step-0 params (rebuilt from the model files
    when the run resumed, so a resumed run keeps its reference)."""
    if mode == "disable":
        return reference_lib.Reference("disable").params(current)
    if _resumed(run):
        from jaxtune.train.build import build_run

        fresh = build_run(run.config, quiet=True)
        return fresh.combine(fresh.trainable, fresh.frozen)
    return reference_lib.Reference("copy").params(current)


def unit_digests(batch: Mapping[str, np.ndarray], prefixes: tuple[str, ...]):
    """[(row, segment, digest)] of every unit of a host batch (segments of the first prefix)."""
    from jaxtune.train.ref_cache import unit_digest

    seg0 = batch[prefixes[0] + "segment_ids"]
    out = []
    for r in range(seg0.shape[0]):
        for s in range(1, int(seg0[r].max(initial=0)) + 1):
            arrays = []
            for p in prefixes:
                sel = batch[p + "segment_ids"][r] == s
                arrays += [batch[p + k][r][sel] for k in ("input_ids", "loss_mask", "positions")]
            out.append((r, s, unit_digest(arrays)))
    return out


class ReferenceBatches:
    """The data worker's batches plus reference arrays (copy / cache modes); keeps the data
    iterator's state()/restore() for exact resume."""

    def __init__(self, stage: Any, run: Any, batches: Iterator[dict], current_params: Callable):
        self.stage, self.run, self.batches = stage, run, batches
        self.current_params = current_params
        self.cache = None
        self.computed = 0  # units whose reference log-probs were computed (not read)

    def __iter__(self) -> ReferenceBatches:
        return self

    def state(self) -> Any:
        return self.batches.state() if hasattr(self.batches, "state") else {}

    def restore(self, state: Any) -> None:
        self.batches.restore(state)

    def _compute(self, batch: dict) -> dict[str, np.ndarray]:
        from jaxtune.sharding import use_mesh
        from jaxtune.train import shardings as sh

        run = self.run
        ref_params = shared_reference(run, self.current_params, self.stage.reference.params)
        inputs = {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype != object}
        with use_mesh(run.mesh, run.rules):
            out = _reference_fn(self.stage, run.model)(
                ref_params, sh.put_batch(inputs, run.mesh, run.rules)
            )
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

    def __next__(self) -> dict:
        batch = next(self.batches)
        if self.stage.reference.mode == "copy":
            return {**batch, **self._compute(batch)}
        return {**batch, **self._cached(batch)}

    def _cached(self, batch: dict) -> dict[str, np.ndarray]:
        from jaxtune.train.ref_cache import RefCache, model_key

        if self.cache is None:
            self.cache = RefCache.open(self.stage.reference.cache_dir, model_key(self.run.config))
        keys = self.stage.ref_keys
        units = unit_digests(batch, self.stage.unit_prefixes)
        found = self.cache.get([d for _, _, d in units])
        if all(v is not None for v in found):
            shape = batch[self.stage.unit_prefixes[0] + "segment_ids"].shape
            out = {k: np.zeros(shape, np.float32) for k in keys}
            for (r, s, _), values in zip(units, found, strict=True):
                for k, v in zip(keys, values, strict=True):
                    out[k][r, s - 1] = v
            return out
        out = self._compute(batch)
        self.computed += len(units)
        values = [np.array([out[k][r, s - 1] for k in keys], np.float32) for r, s, _ in units]
        self.cache.put([d for _, _, d in units], values)
        return out


@functools.cache
def _reference_fn(stage: Any, model: Any) -> Callable:
    """The compiled reference pass of a stage (stage and model are static)."""
    return jax.jit(lambda params, batch: stage.reference_arrays(model, params, batch))
