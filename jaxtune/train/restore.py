"""A trained run back from its checkpoint directory: the config it was run with, the model, and
the full params (frozen base rebuilt from `model.path`, trainable part restored).

    run, params, step = load_trained("runs/sft_lora")            # newest checkpoint
    run, params, step = load_trained("runs/sft_lora/checkpoints/40")

Used by `jaxtune export` and `jaxtune eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jaxtune.errors import UserError
from jaxtune.train.build import Run, build_run
from jaxtune.train.checkpoint import Checkpointer
from jaxtune.train.state import TrainState


def locate(path: str | Path) -> tuple[Path, int | None]:
    """(checkpoints directory, step or None = newest) from an output_dir, its checkpoints/
    directory, or one step's directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--checkpoint {path}: no such directory.")
    if path.name.isdigit() and (path / "state").exists():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if any(p.name.isdigit() for p in path.iterdir()):
        return path, None
    raise UserError(
        f"--checkpoint {path}: no checkpoints there. Give a run's output_dir, its checkpoints/ "
        "directory or one step's directory (checkpoints/<step>)."
    )


def load_trained(path: str | Path, overrides: Any = None) -> tuple[Run, Any, int]:
    """(run, full params, step) of a checkpoint; `overrides(config)` may edit the saved config
    (e.g. a new data.eval) before the run is rebuilt."""
    from jaxtune.cli.config_flags import config_from_dict

    directory, step = locate(path)
    ckpt = Checkpointer(directory, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise UserError(f"{directory}: no complete checkpoint in it.")
        meta = ckpt.read_meta(step)
        config = config_from_dict(meta["config"])
        if overrides is not None:
            overrides(config)
        run = build_run(config, quiet=True)
        template = jax.eval_shape(
            lambda p: TrainState.create(p, run.optimizer, jax.random.PRNGKey(0)), run.trainable
        )
        shardings = jax.tree.map(lambda x: x.sharding, run.trainable)
        template = template.replace(
            params=jax.tree.map(
                lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s),
                template.params,
                shardings,
            )
        )
        state, _, _ = ckpt.restore(step, template)
    finally:
        ckpt.close()
    return run, run.combine(state.params, run.frozen), step
