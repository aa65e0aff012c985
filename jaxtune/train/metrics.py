"""What a run reports: a console progress line, `metrics.jsonl`, TensorBoard, wandb.

    <output_dir>/metrics.jsonl   one JSON object per logged step: {"step", "loss", ...,
                                 "eval_loss", ...}; on resume, lines after the restored step
                                 are dropped so the file reads like one uninterrupted run
    <output_dir>/tensorboard/    event files (tensorboardX), purged past the restored step
    wandb                        when config.log.wandb_project is set (needs `pip install wandb`)

Only process 0 writes (multi-host runs log once).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of `path` whose step is <= last_step (atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar on a terminal; plain lines every log step otherwise."""

    def __init__(self, total: int, start: int, stream=None):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.first_timed: tuple[int, float, int] | None = None  # after compilation

    def update(self, step: int, loss: float, tokens: int, log: bool) -> dict[str, float]:
        """Record that `step` finished; returns throughput figures."""
        now = time.perf_counter()
        self.tokens += tokens
        if self.first_timed is None:  # the first step includes compilation: time from here
            self.first_timed = (step, now, self.tokens)
            rate = tok_s = float("nan")
        else:
            s0, t0, k0 = self.first_timed
            elapsed = max(now - t0, 1e-9)
            rate = (step - s0) / elapsed
            tok_s = (self.tokens - k0) / elapsed
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = len(str(self.total))
        tok = f"{tok_s:,.0f}" if math.isfinite(tok_s) else "?"
        line = (
            f"step {step:>{width}}/{self.total}  loss {loss:.4f}  {tok} tok/s  "
            f"elapsed {format_duration(now - self.t0)}  eta {format_duration(eta)}"
        )
        if self.tty:
            done = int(20 * step / max(self.total, 1))
            print(f"\r[{'#' * done}{'.' * (20 - done)}] {line}", end="", file=self.stream)
            if step == self.total:
                print(file=self.stream)
        elif log or step == self.total:
            print(line, file=self.stream, flush=True)
        return {"tokens_per_s": tok_s, "steps_per_s": rate}

    def message(self, text: str) -> None:
        if self.tty:
            print(file=self.stream)
        print(text, file=self.stream, flush=True)


class MetricsLogger:
    """metrics.jsonl + TensorBoard + wandb for one run (see the module docstring)."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        resume_step: int = 0,
        tensorboard: bool = True,
        wandb_project: str = "",
        run_name: str = "",
        config: dict | None = None,
    ):
        self.main = jax.process_index() == 0
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = self._wandb = None
        if not self.main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.path, resume_step)
        self._file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                str(Path(output_dir) / "tensorboard"), purge_step=resume_step + 1
            )
        if wandb_project:
            try:
                import wandb
            except ImportError:
                from jaxtune.errors import UserError

                raise UserError(
                    "log.wandb_project is set but wandb is not installed: `pip install wandb`, "
                    "or set --config.log.wandb_project=''."
                ) from None
            self._wandb = wandb.init(
                project=wandb_project, name=run_name or None, config=config, resume="allow"
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One record: {"step": step, **metrics} (floats; non-finite values as strings)."""
        if not self.main:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items() if isinstance(v, float) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k.replace("eval_", "eval/", 1), v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if not self.main:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
