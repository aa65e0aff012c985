"""Shared fixtures: tiny Hugging Face checkpoints built on the fly with transformers."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

from tests.tiny_models import TINY_CONFIGS, make_hf_checkpoint

jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", ".cache/jax")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(name) -> directory of a random tiny HF checkpoint (cached per session)."""
    made: dict[str, str] = {}

    def make(name: str) -> str:
        if name not in made:
            directory = tmp_path_factory.mktemp(name)
            make_hf_checkpoint(name, directory)
            made[name] = str(directory)
        return made[name]

    return make


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family_name(request) -> str:
    return request.param
