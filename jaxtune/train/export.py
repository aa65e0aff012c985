"""A trained run to files others load: merged Hugging Face safetensors, or a PEFT adapter.

export_merged(run, params, "out/")    # adapters folded in, quantized bases dequantized;
                                      # config.json + model.safetensors + tokenizer
export_adapter(run, params, "out/")   # adapter_config.json + adapter_model.safetensors

A stage with a scalar head (`stage.head_of(params)`, the reward model of stage `rm`) exports as
transformers' `<Family>ForSequenceClassification` (num_labels=1, `score.weight`); its adapter
export is a PEFT SEQ_CLS adapter with the head under `modules_to_save` ("score"), which
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
num_labels=1), out)` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxtune.errors import UserError
from jaxtune.train.build import DTYPES, Run, model_path


def plain_params(run: Run, params: Any) -> Any:
    """Params with adapters merged and quantized weights dequantized (plain arrays only)."""
    if run.config.peft.method != "none":
        from jaxtune import peft

        if run.config.peft.method == "adapter":
            raise UserError(
                "Houlsby adapters add layers that a Hugging Face checkpoint of this architecture "
                "cannot hold: export them with --adapter instead of merging."
            )
        params = peft.merge(params)
    if run.config.quant.method != "none":
        from jaxtune import quant

        params = quant.dequantize(params)
    if hasattr(run.stage, "export_params"):  # e.g. a reward model's value head
        params = run.stage.export_params(params)
    return params


def export_merged(run: Run, params: Any, out: str | Path, dtype: str = "") -> Path:
    """Write an HF checkpoint (with the tokenizer) that transformers loads."""
    from jaxtune import models

    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: one of {sorted(DTYPES)}.")
    target = DTYPES[dtype] if dtype else None
    head = stage_head(run, params)
    return models.save(
        out, run.model, plain_params(run, params), run.tokenizer, dtype=target, score_head=head
    )


def stage_head(run: Run, params: Any) -> Any:
    """The stage's scalar head (a reward model's), or None."""
    head_of = getattr(run.stage, "head_of", None)
    return None if head_of is None else head_of(params)


def export_adapter(run: Run, params: Any, out: str | Path, initial: Any = None) -> Path:
    """Write the LoRA/DoRA leaves as a PEFT adapter directory (PiSSA: converted to plain LoRA
    over the original weights, which needs the run's `initial` adapted params)."""
    from jaxtune import peft

    if run.config.peft.method not in ("lora", "dora"):
        raise UserError(
            f"--adapter needs a LoRA or DoRA run; this run used peft.method="
            f"{run.config.peft.method!r}. Export merged weights instead (drop --adapter)."
        )
    if run.config.peft.init == "pissa":
        if initial is None:
            raise UserError("a PiSSA adapter export needs the run's initial params.")
        params = peft.pissa_to_lora(params, initial)
    out = Path(out)
    head = stage_head(run, params)
    if hasattr(run.stage, "export_params"):  # drops a value head (rm, ppo) from the adapter
        params = run.stage.export_params(params)
    peft.save_adapter(out, run.model, params, base_model_name_or_path=model_path(run.config))
    if head is not None:
        add_classifier_head(out, head)
    run.tokenizer.save_pretrained(out)
    return out


def add_classifier_head(directory: Path, head: Any) -> None:
    """Turn a PEFT causal-LM adapter directory into a SEQ_CLS one holding the score layer."""
    import json

    import jax
    import numpy as np

    from jaxtune.models.safetensors_io import SafetensorsFile, write_safetensors

    weights = directory / "adapter_model.safetensors"
    tensors = {k: np.array(v) for k, v in SafetensorsFile(weights).items()}  # copies: no mmap
    kernel = np.asarray(jax.device_get(head["kernel"]), np.float32)
    tensors["base_model.model.score.weight"] = np.ascontiguousarray(kernel.T)
    write_safetensors(weights, tensors, metadata={"format": "pt"})
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["task_type"] = "SEQ_CLS"
    config["modules_to_save"] = ["score"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def initial_params(run: Run) -> Any:
    """The params a run started from (deterministic from its config and seed)."""
    return run.combine(run.trainable, run.frozen)
