"""Bad input stops with a message that names the problem (exit status 2, no traceback), and a
run that fails part-way keeps its last good checkpoint."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from jaxtune.cli.main import main
from jaxtune.data import set_path
from jaxtune.train import Checkpointer, NonFiniteLoss, TrainState, train
from tests.train_support import ROOT, env, small_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("errors") / "llama")


def base_args(model: str, output_dir, steps: int = 4) -> list[str]:
    return [
        "train",
        "--config=configs/sft_full.py",
        f"--config.model.path={model}",
        f"--config.data.train={set_path('instruct')}",
        "--config.data.truncation=truncate",
        f"--config.output_dir={output_dir}",
        f"--config.train.steps={steps}",
        "--config.train.batch_size=4",
        "--config.train.seq_len=128",
        "--config.train.save_every=2",
        "--config.train.remat=none",
        "--config.optim.warmup_steps=0",
        "--config.log.tensorboard=false",
    ]


def test_config_typo_on_the_command_line_suggests_the_key(capsys):
    assert main(["train", "--config=configs/sft_lora.py", "--config.optim.lrr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "Did you mean optim.lr?" in err
    assert "Traceback" not in err


def test_config_typo_in_a_file_suggests_the_key(tmp_path, capsys):
    recipe = tmp_path / "typo.py"
    recipe.write_text(
        "from jaxtune.train.config import default_config\n\n"
        "def get_config():\n"
        "    config = default_config()\n"
        "    config.peft.rnak = 4\n"
        "    return config\n"
    )
    assert main(["train", f"--config={recipe}"]) == 2
    err = capsys.readouterr().err
    assert str(recipe) in err and "'peft.rnak'" in err and "Did you mean peft.rank?" in err


def test_bad_value_names_the_key_and_the_choices(capsys):
    assert main(["train", "--config=configs/sft_lora.py", "--config.peft.method=lorra"]) == 2
    err = capsys.readouterr().err
    assert "peft.method='lorra'" in err and "'dora'" in err


def test_unknown_attention_impl_names_the_choices(capsys):
    flag = "--config.model.attention_impl=flash"
    assert main(["train", "--config=configs/sft_lora.py", flag]) == 2
    err = capsys.readouterr().err
    assert "model.attention_impl='flash'" in err and "'fused'" in err and "Traceback" not in err


def test_missing_dataset_names_the_path(model_dir, tmp_path, capsys):
    args = base_args(model_dir, tmp_path / "run")
    args[3] = f"--config.data.train={tmp_path / 'nowhere.jsonl'}"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nowhere.jsonl" in err and "Traceback" not in err


def test_tokenizer_larger_than_the_vocabulary(model_dir, tmp_path, capsys):
    big = tmp_path / "big_tokenizer"
    small_tokenizer(300).save_pretrained(big)
    args = [*base_args(model_dir, tmp_path / "run"), f"--config.model.tokenizer={big}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "300 tokens" in err and "128 rows" in err


def test_user_error_through_the_console_script(tmp_path):
    import subprocess

    script = ROOT / ".venv" / "bin" / "jaxtune"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "jaxtune.cli.main"]
    done = subprocess.run(
        [*cmd, "train", "--config=configs/nope.py"],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "configs/nope.py: no such file" in done.stderr and "Traceback" not in done.stderr


class PoisonedBatches:
    """The real SFT batches, with a NaN in loss_mask at one step (a NaN loss at that step)."""

    def __init__(self, inner, poison_step: int):
        self.inner, self.poison_step, self.step = inner, poison_step, 0

    def __next__(self):
        batch = dict(next(self.inner))
        self.step += 1
        if self.step == self.poison_step:
            batch["loss_mask"] = batch["loss_mask"].copy()
            batch["loss_mask"][0, np.argmax(batch["loss_mask"][0])] = np.nan
        return batch

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(model_dir, tmp_path):
    from jaxtune.cli.config_flags import apply_override, load_config_file
    from jaxtune.train.build import build_run, make_batches

    config = load_config_file(ROOT / "configs" / "sft_full.py")
    for arg in base_args(model_dir, tmp_path / "run", steps=10)[2:]:
        key, value = arg[len("--config.") :].split("=", 1)
        apply_override(config, key, value)
    config.train.save_every = 3
    run = build_run(config)
    batches = PoisonedBatches(make_batches(config, run.tokenizer, run.stage, "train"), 7)
    with pytest.raises(NonFiniteLoss, match=r"step 7: the loss is nan") as info:
        train(config, run=run, batches=batches)
    assert "last good checkpoint is step 6" in str(info.value)

    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() == 6
    meta = ckpt.read_meta(6)
    assert meta["config"]["train"]["steps"] == 10
    template = jax.eval_shape(
        lambda p: TrainState.create(p, run.optimizer, jax.random.PRNGKey(0)), run.trainable
    )
    state, _, _ = ckpt.restore(6, template)
    ckpt.close()
    assert int(state.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_disk_error_while_saving_keeps_the_previous_checkpoint(model_dir, tmp_path):
    import subprocess

    out = tmp_path / "run"
    first = main(base_args(model_dir, out, steps=2))
    assert first == 0
    size = sum(p.stat().st_size for p in (out / "checkpoints" / "2").rglob("*") if p.is_file())
    limit = 64 * 1024  # files above 64 KiB cannot be written: the next checkpoint's data fail
    assert size > 4 * limit

    small_files = (  # the jaxtune command in a process that cannot write files above `limit`
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from jaxtune.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", small_files, *base_args(model_dir, out, steps=4)],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "could not write checkpoint step 4" in done.stderr
    assert "step 2 is intact" in done.stderr
    ckpt = Checkpointer(out / "checkpoints")
    assert ckpt.latest_step() == 2
    assert ckpt.read_meta(2)["config"]["train"]["steps"] == 2
    ckpt.close()
