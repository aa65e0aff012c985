"""Train-side fixes: int8 QLoRA with the default double_quant, quantize-while-loading, mixed
precision dtypes at load, one way of gradient accumulation, the multi-host join in `train`."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.cli.config_flags import apply_override
from jaxtune.data import set_path
from jaxtune.errors import UserError
from jaxtune.train.build import load_model, quantize
from jaxtune.train.config import check_values, default_config
from tests.train_support import tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("fixes") / "llama")


def config_for(model_dir, tmp_path, **overrides):
    config = default_config()
    values = {
        "model.path": model_dir,
        "data.train": set_path("instruct"),
        "output_dir": str(tmp_path / "run"),
        "train.steps": "6",
        "train.batch_size": "2",
        "train.seq_len": "64",
        "train.log_every": "100",
        "train.remat": "none",
        "data.truncation": "truncate",
        "optim.lr": "1e-2",
        "log.tensorboard": "false",
        "log.progress": "false",
    }
    values.update(overrides)
    for key, value in values.items():
        apply_override(config, key, value)
    return config


def test_int8_lora_trains_with_the_default_double_quant(model_dir, tmp_path):
    from jaxtune.train import train

    config = config_for(model_dir, tmp_path, **{"quant.method": "int8", "quant.block_size": "32"})
    config.peft.method = "lora"
    assert config.quant.double_quant is None  # auto: on for nf4/fp4, off for int8
    result = train(config)
    losses = [result.losses[s] for s in range(1, 7)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantized_load_equals_load_then_quantize(model_dir, tmp_path, method):
    config = config_for(model_dir, tmp_path, **{"quant.method": method, "quant.block_size": "32"})
    _, streamed = load_model(config)
    plain = config_for(model_dir, tmp_path)
    _, floats = load_model(plain)
    reference = quantize(config, floats)
    a, ta = jax.tree.flatten(streamed)
    b, tb = jax.tree.flatten(reference)
    assert ta == tb
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "mode, param_dtype, compute",
    [("none", jnp.float32, None), ("bf16", jnp.float32, jnp.bfloat16),
     ("pure_bf16", jnp.bfloat16, jnp.bfloat16)],
)  # fmt: skip
def test_mixed_precision_sets_the_load_dtypes(model_dir, tmp_path, mode, param_dtype, compute):
    config = config_for(model_dir, tmp_path, **{"optim.mixed_precision": mode})
    model, params = load_model(config)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
    assert model.compute_dtype == compute


def test_two_ways_of_accumulating_are_rejected():
    config = default_config()
    config.train.grad_accum = 2
    config.optim.grad_accum_steps = 4
    with pytest.raises(UserError, match=r"two ways of accumulating.*train\.grad_accum"):
        check_values(config)
    config.train.grad_accum = 1
    with pytest.raises(UserError, match=r"set train\.grad_accum=4"):
        check_values(config)
    config.optim.grad_accum_steps = 1
    check_values(config)


def test_train_command_joins_the_job_first(monkeypatch, tmp_path):
    """`jaxtune train` calls distributed.initialize with config.distributed before training."""
    from jaxtune import train as train_pkg
    from jaxtune.cli import train as cli_train
    from jaxtune.sharding import distributed

    calls = []
    monkeypatch.setattr(distributed, "initialize", lambda cfg: calls.append(("join", cfg.mode)))

    def fake_train(config):
        calls.append(("train", config.output_dir))
        raise UserError("stop here")

    monkeypatch.setattr(train_pkg, "train", fake_train)
    args = argparse.Namespace(rest=[f"--config.output_dir={tmp_path}"])
    with pytest.raises(UserError, match="stop here"):
        cli_train.run(args)
    assert calls == [("join", "auto"), ("train", str(tmp_path))]
