"""Rules, specs and the shardings of params (dense, LoRA, DoRA, Houlsby, NF4, QLoRA), optimizer
states and config, checked on an abstract (2, 2, 2) mesh in-process (no devices needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxtune import peft, quant, sharding
from jaxtune.models import CausalLM, ModelConfig
from jaxtune.sharding.params import path_name

CFG = ModelConfig(
    family="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
)
MESH = AbstractMesh((2, 2, 2), sharding.MESH_AXES)


def specs(tree) -> dict[str, P]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(k): s.spec for k, s in flat}


@pytest.fixture(scope="module")
def dense():
    """Abstract params (shapes only): nothing below computes."""
    return jax.eval_shape(CausalLM(CFG).init, jax.random.PRNGKey(0))


def test_topologies():
    table = {t: dict(sharding.rules_for(t)) for t in sharding.TOPOLOGIES}
    assert table["fsdp_tp"]["embed"] == "fsdp" and table["fsdp_tp"]["mlp"] == "tensor"
    assert table["fsdp"]["embed"] == "fsdp" and table["fsdp"]["mlp"] is None
    assert all(v is None for k, v in table["dp"].items() if k != "batch")
    assert table["dp"]["batch"] == ("fsdp", "data", "tensor")
    with pytest.raises(sharding.ShardingConfigError, match="topology"):
        sharding.rules_for("zero3")
    with pytest.raises(sharding.ShardingConfigError, match="unknown logical axis"):
        sharding.rules_for("fsdp", {"hidden": "fsdp"})
    with pytest.raises(sharding.ShardingConfigError, match="mesh axes"):
        sharding.rules_for("fsdp", {"embed": "model"})


def test_spec_drops_unit_repeated_and_non_dividing_axes():
    rules = sharding.rules_for("fsdp_tp")
    assert sharding.spec(("batch", "sequence", "embed"), rules, MESH, (8, 4, 64)) == P(
        ("fsdp", "data")
    )  # embed's "fsdp" is taken by batch
    assert sharding.spec(("layers", "embed", "kv"), rules, MESH, (2, 64, 16)) == P(
        None, "fsdp", "tensor"
    )
    assert sharding.spec(("layers", "embed", "kv"), rules, MESH, (2, 64, 3)) == P(None, "fsdp")
    assert sharding.spec(("batch",), rules, MESH, (2,)) == P("fsdp")  # 2 rows: fsdp only
    one = AbstractMesh((1, 1, 1), sharding.MESH_AXES)
    assert sharding.spec(("layers", "embed", "mlp"), rules, one, (2, 64, 96)) == P()


def test_dense_params_follow_the_table(dense):
    got = specs(sharding.param_shardings(dense, MESH, sharding.rules_for("fsdp_tp")))
    assert got["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert got["layers/self_attn/o_proj/kernel"] == P(None, "tensor", "fsdp")
    assert got["layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert got["embed_tokens/embedding"] == P("tensor", "fsdp")
    assert got["lm_head/kernel"] == P("fsdp", "tensor")
    assert got["layers/input_layernorm/scale"] == P()
    fn = sharding.sharding_fn(MESH, sharding.rules_for("fsdp_tp"))
    for name, spec in got.items():
        shape = dict(path_and_shape(dense))[name]
        assert fn(name, shape).spec == spec, name


def path_and_shape(tree):
    return [
        (path_name(k), tuple(v.shape)) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def transformed(dense):
    """NF4 v_proj and int8 up_proj, LoRA on q/v (QLoRA on v), DoRA on k, Houlsby on down."""
    params = quant.quantize(dense, targets=["v_proj"], method="nf4", block_size=32)
    params = quant.quantize(params, targets=["up_proj"], method="int8", block_size=None)
    params = peft.lora(params, ["q_proj", "v_proj"], rank=4, rng=jax.random.PRNGKey(1))
    params = peft.dora(params, ["k_proj"], rank=4, rng=jax.random.PRNGKey(2))
    return peft.adapter(params, ["down_proj"], bottleneck=8, rng=jax.random.PRNGKey(3))


def test_adapter_and_quantized_leaves_shard_like_their_base(dense):
    params = jax.eval_shape(transformed, dense)
    got = specs(sharding.param_shardings(params, MESH, sharding.rules_for("fsdp_tp")))
    q, v, k = (f"layers/self_attn/{n}/kernel" for n in ("q_proj", "v_proj", "k_proj"))
    assert got[f"{q}/base"] == P(None, "fsdp", "tensor")
    assert got[f"{q}/lora_a"] == P(None, "fsdp")  # (L, in, r): the base's `in`
    assert got[f"{q}/lora_b"] == P(None, None, "tensor")  # (L, r, out): the base's `out`
    assert got[f"{v}/base/data"] == P(None, "fsdp", "tensor")  # NF4 (L, in/2, out)
    assert got[f"{v}/base/absmax"] == P(None, "fsdp", "tensor")  # (L, in/B, out)
    assert got[f"{v}/lora_b"] == P(None, None, "tensor")  # QLoRA
    assert got[f"{k}/magnitude"] == P(None, "tensor")  # DoRA (L, out)
    assert got["layers/mlp/up_proj/kernel/data"] == P(None, "fsdp", "tensor")  # int8
    down = "layers/mlp/down_proj/kernel"  # Houlsby: no dense form; matched to its base
    assert got[f"{down}/base"] == P(None, "tensor", "fsdp")
    assert got[f"{down}/down"] == P(None, "fsdp")  # (L, out, m)
    assert got[f"{down}/up"] == P(None, None, "fsdp")  # (L, m, out)


def test_opt_state_takes_the_param_shardings(dense):
    params = jax.eval_shape(
        lambda p: peft.lora(p, ["q_proj"], rank=4, rng=jax.random.PRNGKey(1)), dense
    )
    trainable, _ = peft.split_trainable(params)
    rules = sharding.rules_for("fsdp_tp")
    t_sh = jax.tree.map(
        lambda s, m: s if m else None,
        sharding.param_shardings(params, MESH, rules),
        peft.trainable_mask(params),
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    got = specs(
        sharding.opt_state_shardings(jax.eval_shape(tx.init, trainable), trainable, t_sh, MESH)
    )
    lora_a = "layers/self_attn/q_proj/kernel/lora_a"
    assert got[f"1/0/mu/{lora_a}"] == P(None, "fsdp")
    assert got[f"1/0/nu/{lora_a}"] == P(None, "fsdp")
    assert got["1/0/count"] == P()
    factored = optax.adafactor(1e-3, min_dim_size_to_factor=16)
    state = jax.eval_shape(factored.init, {"w": jnp.zeros((2, 64, 96))})
    w_sh = {"w": sharding.sharding_fn(MESH, rules)("layers/mlp/up_proj/kernel", (2, 64, 96))}
    got = specs(sharding.opt_state_shardings(state, {"w": jnp.zeros((2, 64, 96))}, w_sh, MESH))
    assert [s for k, s in got.items() if k.endswith("v_row/w")] == [P(None, "fsdp")]  # (L, in)
    assert [s for k, s in got.items() if k.endswith("v_col/w")] == [P(None, "tensor")]  # (L, out)


def test_config_mesh_and_rules():
    cfg = sharding.default_config()
    assert sharding.mesh_shape(cfg, 8) == (1, 8, 1)
    cfg.tensor, cfg.fsdp, cfg.data = 2, -1, 2
    assert sharding.mesh_shape(cfg, 8) == (2, 2, 2)
    cfg.rules.vocab = ""
    cfg.rules.embed = "fsdp,tensor"
    rules = dict(sharding.rules_from_config(ml_collections.ConfigDict({"sharding": cfg})))
    assert rules["vocab"] is None and rules["embed"] == ("fsdp", "tensor")
    with pytest.raises(sharding.ShardingConfigError, match="needs 12 devices"):
        sharding.mesh_shape((2, 3, 2), 8)
    with pytest.raises(sharding.ShardingConfigError, match="not a multiple"):
        sharding.mesh_shape((3, -1, 1), 8)
    mesh = sharding.make_mesh((1, -1, 1))
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}


def test_shard_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 8))
    assert sharding.shard(x, ("batch", "embed")) is x
    with sharding.use_mesh(sharding.make_mesh((1, 1, 1)), sharding.rules_for()):
        y = jax.jit(lambda a: sharding.shard(a * 2, ("batch", "embed")))(x)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((4, 8)))
