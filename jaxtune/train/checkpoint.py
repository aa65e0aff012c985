"""Train checkpoints with orbax: periodic, asynchronous, `max_to_keep`, atomic, resumable.

    <output_dir>/checkpoints/<step>/
        state/   the TrainState arrays (trainable params, optimizer state, step, rng); for PEFT
                 runs the trainable params are the adapters only, the frozen base is rebuilt
                 from `model.path` on resume and export
        data/    the data iterator's position (JSON)
        meta/    the run's config and the state's leaf paths (JSON)

orbax writes a step into a temporary directory and renames it when complete, so a crash or a
disk error while saving leaves the previous steps usable, and `latest_step` never returns a
half-written one. The state is stored as a flat dict of leaves keyed by position, with the leaf
paths in `meta`, so any pytree (adapter or quantized leaves included) round-trips; restoring
into a differently shaped state names the first leaf that differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxtune.errors import UserError


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, permissions, ...)."""


def _flatten(tree: Any) -> tuple[dict[str, Any], list[str]]:
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat = {f"{i:06d}": leaf for i, (_, leaf) in enumerate(leaves_with_paths)}
    paths = [jax.tree_util.keystr(p) for p, _ in leaves_with_paths]
    return flat, paths


def _abstract(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class Checkpointer:
    """Saves and restores (TrainState, data state, config) under `<directory>/<step>`."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save=True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep if max_to_keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )
        self._pending: int | None = None  # the step being written in the background

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (None when there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Start writing step `step` (returns before the write is done when async)."""
        self.wait()  # surface an error of the previous save before starting this one
        flat, paths = _flatten(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(flat),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(dict(meta, leaf_paths=paths)),
        )
        self._pending = step
        try:
            self._manager.save(step, args=args, force=True)
        except Exception as e:
            self._failed(e)

    def wait(self) -> None:
        """Block until a background save has finished; raise CheckpointWriteError if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._failed(e)
        self._pending = None

    def _failed(self, error: BaseException) -> None:
        step, self._pending = self._pending, None
        self._manager.reload()
        previous = [s for s in self._manager.all_steps() if s != step]
        kept = f"step {max(previous)} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"could not write checkpoint step {step} in {self.directory} "
            f"({type(error).__name__}: {error}); {kept}. Free disk space or fix permissions, "
            "then run the same command again to resume."
        ) from error

    def restore(self, step: int, template: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step`, laid out like `template` (same shardings)."""
        flat_template, paths = _flatten(template)
        meta = self.read_meta(step)
        saved_paths = meta.get("leaf_paths", [])
        if saved_paths != paths:
            diff = next(
                (f"{a!r} vs {b!r}" for a, b in zip(saved_paths, paths, strict=False) if a != b),
                f"{len(saved_paths)} leaves saved, {len(paths)} expected",
            )
            raise UserError(
                f"checkpoint {self.directory / str(step)} does not fit this run's state "
                f"(first difference: saved {diff}). Was it written with another config "
                "(peft method, rank, optimizer)? Use a new output_dir or the same config."
            )
        abstract = {k: _abstract(v) for k, v in flat_template.items()}
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
            ),
        )
        flat = restored["state"]
        leaves = [flat[k] for k in sorted(flat_template)]
        state = jax.tree.unflatten(jax.tree.structure(template), leaves)
        for path, got, want in zip(paths, leaves, jax.tree.leaves(template), strict=True):
            if got.shape != want.shape:
                raise UserError(
                    f"checkpoint {self.directory / str(step)}: {path} has shape {got.shape}, "
                    f"this run expects {want.shape}."
                )
        return state, dict(restored["data"] or {}), meta

    def read_meta(self, step: int) -> dict:
        """The JSON metadata (config, leaf paths) of a step."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()
