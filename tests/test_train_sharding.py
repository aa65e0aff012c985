"""8 simulated CPU devices: a few SFT steps on a (data x fsdp) and a (data x tensor) mesh give
the same params as on one device (full fine-tuning with AdamW, every weight sharded)."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtune.cli.config_flags import apply_override, load_config_file
from jaxtune.data import set_path
from jaxtune.models import load
from jaxtune.train import train
from tests.train_support import ROOT, env, tiny_llama

STEPS = 3
MESHES = {"data_fsdp": (2, 4, 1), "data_tensor": (2, 1, 4)}
SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, {root!r})
assert jax.device_count() == 8, jax.devices()
from tests.test_train_sharding import run_steps
for name, shape in {meshes!r}.items():
    flat = run_steps({model!r}, {out!r} + "/" + name, shape)
    np.savez({out!r} + "/" + name + ".npz", **flat)
"""


def flatten(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def run_steps(model: str, output_dir: str, mesh: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Train STEPS steps; the params as {path: array} (gathered to the host)."""
    config = load_config_file(ROOT / "configs" / "sft_full.py")
    overrides = {
        "model.path": model,
        "data.train": set_path("instruct"),
        "data.truncation": "truncate",
        "output_dir": output_dir,
        "train.steps": str(STEPS),
        "train.batch_size": "8",
        "train.seq_len": "64",
        "train.save_every": "0",
        "train.max_to_keep": "1",
        "train.remat": "none",
        "optim.lr": "1e-2",
        "optim.warmup_steps": "0",
        "optim.eps": "1e-3",  # Adam's update stays a smooth function of the gradient
        "log.tensorboard": "false",
        "sharding.topology": "fsdp_tp",
        "sharding.data": str(mesh[0]),
        "sharding.fsdp": str(mesh[1]),
        "sharding.tensor": str(mesh[2]),
    }
    for key, value in overrides.items():
        apply_override(config, key, value)
    result = train(config)
    flat = flatten(jax.device_get(result.state.params))
    out = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
    if mesh != (1, 1, 1):  # the layouts really are split
        specs = jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, result.state.params))
        assert any(any(p is not None for p in spec) for spec in specs), specs
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("sharding") / "llama")


def test_sharded_steps_match_one_device(model_dir, tmp_path):
    reference = run_steps(model_dir, str(tmp_path / "one"), (1, 1, 1))
    script = SCRIPT.format(root=str(ROOT), meshes=MESHES, model=model_dir, out=str(tmp_path))
    environ = env()
    environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, initial = load(model_dir)  # training moved the params far more than the tolerance
    initial = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flatten(initial)}
    assert sorted(initial) == sorted(reference)
    assert max(float(np.abs(initial[k] - reference[k]).max()) for k in reference) > 1e-3
    for name in MESHES:
        sharded = dict(np.load(tmp_path / f"{name}.npz"))
        assert sorted(sharded) == sorted(reference)
        for key, want in reference.items():
            np.testing.assert_allclose(
                sharded[key], want, rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}"
            )
