"""Each topology overlay trains to the same params as one device (8 simulated CPU devices).

The run (tests/sharding_worker.py): a 2-layer Llama, v_proj NF4-quantized, LoRA on q/v/down_proj
(jaxtune.peft, jaxtune.quant), Adam on the adapter arrays only, 3 steps of a masked LM loss on
packed rows; params, adapter and quantized leaves, optimizer state and batch all placed by
jaxtune.sharding.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.sharding_runs import arrays, single_process_results

ATOL = 1e-5  # fp32: sharded reductions sum in another order


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    return single_process_results(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("kind", ["grad", "param"])  # first-step gradients; params after 3 steps
@pytest.mark.parametrize("topology", ["dp", "fsdp", "fsdp_tp"])
def test_topology_matches_one_device(results, topology, kind):
    ref, got = arrays(results, "ref"), arrays(results, topology)
    assert sorted(ref) == sorted(got)
    names = [n for n in ref if n.startswith(kind + "/")]
    assert names
    for name in names:
        np.testing.assert_allclose(got[name], ref[name], atol=ATOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(got["loss"], ref["loss"], atol=ATOL, rtol=0)


def test_reference_run_trains_only_the_adapters(results):
    """The comparison means something: A/B moved, frozen weights did not, loss went down."""
    from tests.sharding_worker import init_params

    start = init_params()
    ref = arrays(results, "ref")
    a0 = start["layers"]["self_attn"]["q_proj"]["kernel"].lora_a
    base0 = start["layers"]["self_attn"]["q_proj"]["kernel"].base
    assert np.abs(ref["param/layers/self_attn/q_proj/kernel/lora_a"] - a0).max() > 1e-3
    np.testing.assert_array_equal(ref["param/layers/self_attn/q_proj/kernel/base"], base0)
    embedding = start["embed_tokens"]["embedding"]
    np.testing.assert_array_equal(ref["param/embed_tokens/embedding"], embedding)
    assert np.abs(ref["grad/layers/self_attn/q_proj/kernel/lora_a"]).max() > 1e-4
    loss = ref["loss"]
    assert loss[-1] < loss[0]
