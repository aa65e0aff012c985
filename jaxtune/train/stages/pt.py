"""Stage `pt` (pretraining / continued pretraining): causal LM on plain text.

The same loss as `sft`; the data worker reads rows as plain text and counts every token.
"""

from __future__ import annotations

from typing import Any

from jaxtune.train.stages.sft import LMStage


def make_stage(config: Any) -> LMStage:
    return LMStage(name="pt", loss_chunk=int(config.train.loss_chunk))
