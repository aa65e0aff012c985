"""Two CPU processes joined by jax.distributed (4 simulated devices each) train SFT-LoRA to the
same params as one process with 8 devices and as one device; plus the join logic itself."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.sharding import distributed, make_mesh
from jaxtune.sharding.rules import ShardingConfigError
from tests.sharding_runs import arrays, free_port, single_process_results, start

ATOL = 1e-5


@pytest.fixture(scope="module")
def two_process_params(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost") / "mh.npz"
    port = str(free_port())
    args = ["--devices", "4", "--procs", "2", "--port", port, "--mesh", "mh=2,2,2", "--out"]
    procs = [start("tests.sharding_worker", *args, str(out), "--pid", str(i)) for i in (0, 1)]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            errors.append(err[-3000:])
    assert not errors, "\n".join(errors)
    with np.load(out) as data:
        return arrays(dict(data), "mh")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return single_process_results(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("reference", ["ref", "fsdp_tp"])  # one device; one process, 8 devices
def test_two_processes_match(two_process_params, single, reference):
    """Final params, first-step gradients and losses."""
    ref = arrays(single, reference)
    assert sorted(ref) == sorted(two_process_params)
    for name, want in ref.items():
        np.testing.assert_allclose(two_process_params[name], want, atol=ATOL, rtol=0, err_msg=name)


def test_plan_explicit_from_config_and_env():
    cfg = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    join = distributed.plan(cfg, env={})
    assert (join.how, join.coordinator_address, join.num_processes, join.process_id) == (
        "explicit",
        "10.0.0.1:1234",
        4,
        2,
    )
    env = {
        "JAXTUNE_COORDINATOR_ADDRESS": "h:1",
        "JAXTUNE_NUM_PROCESSES": "2",
        "JAXTUNE_PROCESS_ID": "1",
        "JAXTUNE_LOCAL_DEVICE_IDS": "0,1",
    }
    join = distributed.plan(distributed.default_config(), env=env)
    assert (join.how, join.process_id, join.local_device_ids) == ("explicit", 1, (0, 1))


def test_plan_detects_launchers_and_single_process():
    assert distributed.plan(None, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).how == "detected"
    assert distributed.plan(None, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).how == "single"
    assert distributed.plan(None, env={"OMPI_COMM_WORLD_SIZE": "2"}).how == "detected"
    assert distributed.plan(None, env={}).how == "single"
    assert distributed.plan({"mode": "off"}, env={"OMPI_COMM_WORLD_SIZE": "2"}).how == "single"


def test_plan_rejects_incomplete_coordinator():
    with pytest.raises(ShardingConfigError, match="num_processes"):
        distributed.plan({"coordinator_address": "h:1", "num_processes": 2}, env={})


def test_single_process_helpers():
    mesh = make_mesh((1, 1, 1))
    from jaxtune.sharding import batch_sharding

    sh = batch_sharding(mesh)
    np.testing.assert_array_equal(distributed.process_rows(sh, 6), np.arange(6))
    batch = distributed.global_batch({"x": np.arange(12).reshape(6, 2)}, sh, 6)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(12).reshape(6, 2))
    assert distributed.is_main()
    assert distributed.main_only(lambda: 3)() == 3
    assert distributed.initialize({"mode": "off"}).how == "single"
