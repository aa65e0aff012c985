"""Shared pieces of the DPO-family tests: one tiny checkpoint per test process, the shipped
preference set split into train and held-out pairs, configs, and a stub model for the loss
plumbing tests."""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxtune.data import set_path
from jaxtune.train.config import default_config
from tests.train_support import tiny_llama


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="jaxtune_dpo_tests_"))


@functools.cache
def tiny_dir() -> str:
    return tiny_llama(workdir() / "llama")


@functools.cache
def preference_split(held_out: int = 12) -> tuple[str, str]:
    """(train file, held-out file): the last `held_out` pairs of the shipped set are held out."""
    lines = Path(set_path("preference")).read_text().splitlines()
    train, held = workdir() / "pref_train.jsonl", workdir() / "pref_eval.jsonl"
    train.write_text("\n".join(lines[:-held_out]) + "\n")
    held.write_text("\n".join(lines[-held_out:]) + "\n")
    return str(train), str(held)


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config_for(out_dir: str, stage: str = "dpo", model_dir: str | None = None, **data):
    c = default_config()
    c.stage = stage
    c.model.path = model_dir or tiny_dir()
    c.output_dir = out_dir
    c.data.train = set_path("preference")
    c.data.shuffle = False
    c.data.truncation = "truncate"
    for k, v in data.items():
        c.data[k] = v
    c.peft.method = "lora"
    c.peft.rank = 4
    c.train.batch_size = 4
    c.train.seq_len = 128
    c.train.remat = "none"
    c.train.save_every = 0
    c.train.log_every = 100
    c.log.tensorboard = False
    return c


@dataclasses.dataclass(frozen=True)
class StubModel:
    """An embedding and a head, no attention: the cheapest model the stages can call."""

    def hidden_states(self, params, input_ids, **_):
        return jnp.tanh(params["embed"][input_ids]), None

    def logits(self, params, hidden):
        return hidden @ params["head"]


def stub_params(seed: int, vocab: int = 128, dim: int = 16) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "embed": jax.random.normal(k1, (vocab, dim)),
        "head": jax.random.normal(k2, (dim, vocab)),
    }
