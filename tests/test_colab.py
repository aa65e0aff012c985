"""Every colab/ notebook runs top to bottom in a fresh kernel, and its last cell's assert (the
result it claims: loss lower, accuracy up, reward up) holds.

The notebooks read JAXTUNE_NOTEBOOK_MODEL (a tiny random Llama with a small real tokenizer,
built here), JAXTUNE_NOTEBOOK_STEPS and (where a notebook has one) JAXTUNE_NOTEBOOK_LR;
everything else is the notebook as a user runs it.
"""

from __future__ import annotations

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from jaxtune.train import stages
from tests.tiny_models import SMALL
from tests.train_support import ROOT, small_tokenizer

COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
STEPS = {  # optimizer steps per notebook on the tiny model (enough to move its metric clearly)
    "01_lora_sft.ipynb": 40,
    "02_qlora.ipynb": 40,
    "03_dpo.ipynb": 30,
    "04_instructgpt.ipynb": 32,
    "05_transforms_in_your_flax_model.ipynb": 60,
}
NEEDS = {  # notebooks whose stages may not be on this branch yet
    "03_dpo.ipynb": ("dpo",),
    "04_instructgpt.ipynb": ("rm", "ppo"),
}
LR = {  # notebooks that take a learning rate: a tiny random model needs larger steps
    "04_instructgpt.ipynb": 1e-2,
}
CELL_TIMEOUT = 300


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random Llama with the small real tokenizer; MLP width 128 so that the notebooks'
    NF4 blocks of 64 divide every kernel's input axis. init 0.2: logits of order 1 (see
    tests.train_support.tiny_llama)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("colab") / "llama"
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", **dict(SMALL, intermediate_size=128, initializer_range=0.2)
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    small_tokenizer(SMALL["vocab_size"]).save_pretrained(directory)
    return str(directory)


def test_notebooks_match_their_builder():
    sys.path.insert(0, str(COLAB))
    try:
        import _build
    finally:
        sys.path.remove(str(COLAB))
    assert sorted(_build.NOTEBOOKS) == NOTEBOOKS
    for name, cells in _build.NOTEBOOKS.items():
        assert (COLAB / name).read_text() == _build.render(cells), f"rebuild {name}"


def has_image(nb: nbformat.NotebookNode) -> bool:
    return any(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_its_claim_holds(name, tiny_model, tmp_path, monkeypatch):
    missing = [s for s in NEEDS.get(name, ()) if s not in stages.available()]
    if missing:
        pytest.skip(f"{name} needs the stages {missing}, which are not in jaxtune/train/stages")
    nb = nbformat.read(COLAB / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.lstrip().startswith("# On Colab"), "first cell: the install hint"
    assert "MODEL = " in code[1].source, "second cell: the MODEL variable"
    assert "assert " in code[-1].source, "the last cell asserts the notebook's claim"

    monkeypatch.setenv("JAXTUNE_NOTEBOOK_MODEL", tiny_model)
    monkeypatch.setenv("JAXTUNE_NOTEBOOK_STEPS", str(STEPS.get(name, 10)))
    if name in LR:
        monkeypatch.setenv("JAXTUNE_NOTEBOOK_LR", str(LR[name]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # raises CellExecutionError naming the failing cell (asserts included)
    finally:
        nbformat.write(nb, tmp_path / name)  # the executed notebook, to look at

    assert all(c.execution_count for c in code), "every code cell ran"
    assert has_image(nb), "a curve is plotted inline"
