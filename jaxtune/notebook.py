"""Small helpers of the colab/ notebooks: metric curves of a run and sizes of params.

    from jaxtune import notebook
    notebook.plot_metrics("runs/x", ["loss", "eval_loss"])    # inline in Jupyter / Colab
    steps, losses = notebook.curve(notebook.read_metrics("runs/x"), "loss")
    print(notebook.format_bytes(notebook.tree_bytes(params)))

A run's metrics are the records of `<output_dir>/metrics.jsonl` that the train loop writes
(`{"step": s, "loss": ..., "eval_loss": ..., ...}`, one line per logged step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxtune.errors import UserError
from jaxtune.optim.size import tree_bytes

__all__ = ["curve", "format_bytes", "plot_metrics", "read_metrics", "tree_bytes"]


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `<output_dir>/metrics.jsonl`, in file order."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{path} does not exist: train a run with output_dir={output_dir} first.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that hold a finite number under `key`.

    A resumed run may log a step twice; the last record of a step wins."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            by_step[int(record["step"])] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_metrics(
    output_dir: str | Path,
    keys: Sequence[str] = ("loss",),
    *,
    title: str = "",
    path: str | Path | None = None,
) -> Any:
    """One panel per metric in `keys` (train curves as lines, eval points as markers).

    Returns the matplotlib Figure (shown inline when it is a notebook cell's value); saved to
    `path` when given. Keys missing from the run are an error naming the keys it has."""
    import matplotlib.pyplot as plt

    records = read_metrics(output_dir)
    curves = {key: curve(records, key) for key in keys}
    missing = [key for key, (steps, _) in curves.items() if not steps]
    if missing:
        known = sorted({k for r in records for k in r if k != "step"})
        raise UserError(f"{output_dir}/metrics.jsonl has no {missing}; it has {known}.")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes[0], curves.items(), strict=True):
        style = "o-" if key.startswith("eval_") or len(steps) < 3 else "-"
        ax.plot(steps, values, style, markersize=4)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    plt.close(fig)  # the returned figure still renders once as the cell's value
    return fig


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
