"""The README's code stays true: its library example runs as written on a tiny checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_names_the_two_commands_first():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def llama_checkpoint(directory: Path) -> str:
    """A tiny random Llama with widths that are multiples of 64 (the NF4 block), like real ones."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


def test_library_example_runs_and_learns(tmp_path, monkeypatch):
    (block,) = [b for b in python_blocks(README.read_text()) if "import jaxtune.models" in b]
    assert 'MODEL = "path/to/hf-checkpoint"' in block
    code = block.replace('"path/to/hf-checkpoint"', repr(llama_checkpoint(tmp_path / "model")))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert float(scope["loss_fn"](scope["trainable"], scope["frozen"], scope["batch"])) < float(
        scope["before"]
    )
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
