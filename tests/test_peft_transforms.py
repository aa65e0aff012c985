"""Target selection, the adapter leaves one by one (PiSSA, Houlsby, dropout, nested bases), the
tree helpers, freeze-tuning's layer semantics and the error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxtune import models, peft
from jaxtune.models.layers import linear

KEY = jax.random.PRNGKey(0)
X = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 64))


@pytest.fixture(scope="module")
def llama(tiny_checkpoint):
    return models.load(tiny_checkpoint("llama"))


def kernel(params, module: str, block: str = "self_attn"):
    return params["layers"][block][module]["kernel"]


def randomized(leaf, seed: int = 0):
    """A leaf as after some training: nonzero B (and a moved magnitude for DoRA)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    leaf = leaf.replace(lora_b=0.1 * jax.random.normal(k1, leaf.lora_b.shape))
    if isinstance(leaf, peft.DoraWeight):
        noise = 1 + 0.2 * jax.random.normal(k2, leaf.magnitude.shape)
        leaf = leaf.replace(magnitude=leaf.magnitude * noise)
    return leaf


def layer0(leaf):
    return jax.tree.map(lambda x: x[0], leaf)


# ------------------------------------------------------------------------------- selection
def test_targets_by_names_regex_predicate_and_all_linear(llama):
    _, params = llama
    by_names = peft.select(params, ["q_proj", "v_proj"])
    assert by_names == ["layers/self_attn/q_proj/kernel", "layers/self_attn/v_proj/kernel"]
    assert peft.select(params, r"self_attn/(q|v)_proj") == by_names
    wide = peft.select(params, lambda path, w: w.shape[-1] == 96)
    assert wide == ["layers/mlp/gate_proj/kernel", "layers/mlp/up_proj/kernel"]
    every = peft.select(params, "all-linear")
    assert len(every) == 7 and "lm_head/kernel" not in every
    assert peft.select(params, ["lm_head"]) == ["lm_head/kernel"]


def test_targets_that_match_nothing_list_the_candidates(llama):
    _, params = llama
    with pytest.raises(peft.TargetError, match=r"qq_proj.*layers/self_attn/k_proj/kernel"):
        peft.lora(params, ["qq_proj"], rng=KEY)
    with pytest.raises(peft.TargetError, match="matches no weight"):
        peft.lora(params, "input_layernorm", rng=KEY)  # a norm is no weight matrix


def test_rank_larger_than_the_weight_is_an_error(llama):
    _, params = llama
    with pytest.raises(peft.RankError, match=r"v_proj/kernel: rank=40.*\[in=64, out=32\]"):
        peft.lora(params, ["v_proj"], rank=40, rng=KEY)
    with pytest.raises(peft.RankError, match="k_proj"):
        peft.dora(params, ["k_proj"], rank=33, rng=KEY)


def test_adapting_twice_is_an_error(llama):
    _, params = llama
    adapted = peft.lora(params, ["q_proj"], rng=KEY)
    with pytest.raises(peft.TargetError, match="already carries a LoraWeight"):
        peft.dora(adapted, ["q_proj"], rng=KEY)


# ------------------------------------------------------------------------------- leaves
def test_stacked_adapters_have_a_layer_axis_and_independent_init(llama):
    _, params = llama
    leaf = kernel(peft.lora(params, ["q_proj"], rank=4, alpha=8, rslora=True, rng=KEY), "q_proj")
    assert leaf.lora_a.shape == (2, 64, 4) and leaf.lora_b.shape == (2, 4, 64)
    assert leaf.scale == 8 / 2  # rsLoRA: alpha / sqrt(r)
    assert not np.allclose(leaf.lora_a[0], leaf.lora_a[1])
    assert float(jnp.abs(leaf.lora_a).max()) <= 1 / np.sqrt(64)  # PEFT's kaiming-uniform bound
    assert float(jnp.abs(leaf.lora_b).max()) == 0.0


@pytest.mark.parametrize("method", ["lora", "dora", "pissa"])
def test_merged_equals_adapted_and_unmerge_inverts(llama, method):
    _, params = llama
    transform = getattr(peft, method)
    adapted = transform(params, ["q_proj"], rank=4, rng=KEY)
    leaf = randomized(kernel(adapted, "q_proj"))
    one = layer0(leaf)
    np.testing.assert_allclose(X @ one.materialize(), one.linear(X), atol=1e-5, rtol=0)
    adapted["layers"]["self_attn"]["q_proj"]["kernel"] = leaf
    merged = peft.merge(adapted)
    assert not any(isinstance(x, peft.AdapterLeaf) for x in jax.tree.leaves(merged))
    restored = kernel(peft.unmerge(merged, adapted), "q_proj")
    np.testing.assert_allclose(restored.base, leaf.base, atol=1e-5, rtol=0)


def test_dora_norm_without_the_dense_product_matches_the_direct_norm(llama):
    _, params = llama
    leaf = randomized(kernel(peft.dora(params, ["o_proj"], rank=4, rng=KEY), "o_proj"))
    from jaxtune.peft.dora import column_norm

    direct = jnp.linalg.norm(leaf.base + leaf.scale * leaf.lora_a @ leaf.lora_b, axis=-2)
    fast = column_norm(leaf.base, leaf.lora_a, leaf.lora_b, leaf.scale)
    np.testing.assert_allclose(fast, direct, rtol=1e-5)


def spectral_gap_weight() -> jax.Array:
    """[2, 64, 96] kernels whose top-4 singular values stand out (10, 8, 6, 4, then < 0.5)."""
    rs = np.random.RandomState(0)
    out = []
    for _ in range(2):
        u = np.linalg.qr(rs.randn(64, 64))[0]
        v = np.linalg.qr(rs.randn(96, 64))[0]
        s = np.concatenate([[10, 8, 6, 4], 0.5 * 0.9 ** np.arange(60)])
        out.append((u * s) @ v.T)
    return jnp.asarray(np.stack(out), jnp.float32)


def test_dora_norm_can_pass_the_gradient(llama):
    _, params = llama
    leaf = layer0(randomized(kernel(peft.dora(params, ["o_proj"], rank=4, rng=KEY), "o_proj")))
    exact = leaf.replace(detach_norm=False)
    np.testing.assert_allclose(exact.linear(X), leaf.linear(X), atol=1e-6, rtol=0)
    loss = lambda w: jnp.sum(linear(X, w) ** 2)
    g_detached, g_exact = jax.grad(loss)(leaf), jax.grad(loss)(exact)
    assert not np.allclose(g_detached.lora_b, g_exact.lora_b, rtol=1e-3)


@pytest.mark.parametrize("niter", [None, 2])
def test_pissa_reconstructs_the_weight_from_its_principal_part(llama, niter):
    _, params = llama
    w = kernel(params, "up_proj", "mlp") if niter is None else spectral_gap_weight()
    tree = {"layers": {"mlp": {"up_proj": {"kernel": w}}}}
    leaf = kernel(peft.pissa(tree, ["up_proj"], rank=4, niter=niter, rng=KEY), "up_proj", "mlp")
    np.testing.assert_allclose(leaf.base + leaf.delta(), w, atol=1e-5, rtol=0)
    for i in range(2):
        u, s, vt = np.linalg.svd(np.asarray(w[i]), full_matrices=False)
        top = (u[:, :4] * s[:4]) @ vt[:4]
        err = np.linalg.norm(np.asarray(leaf.delta()[i]) - top) / np.linalg.norm(top)
        assert err < 1e-4, err


def test_pissa_converts_to_a_lora_over_the_original_weight(llama):
    _, params = llama
    initial = peft.pissa(params, ["q_proj"], rank=4, rng=KEY)
    trained = dict(initial)
    trained["layers"] = jax.tree.map(lambda x: x, initial["layers"])
    leaf = kernel(initial, "q_proj")
    trained["layers"]["self_attn"]["q_proj"]["kernel"] = leaf.replace(
        lora_a=leaf.lora_a * 1.1, lora_b=leaf.lora_b - 0.01
    )
    converted = kernel(peft.pissa_to_lora(trained, initial), "q_proj")
    np.testing.assert_allclose(converted.base, kernel(params, "q_proj"), atol=1e-5, rtol=0)
    assert converted.rank == 8 and not converted.residual_base
    ref = layer0(kernel(trained, "q_proj"))
    np.testing.assert_allclose(layer0(converted).linear(X), ref.linear(X), atol=1e-4, rtol=0)


def test_houlsby_adapter_is_near_identity_at_init(llama):
    _, params = llama
    adapted = peft.adapter(params, bottleneck=8, rng=KEY)
    assert peft.select(adapted, lambda p, w: isinstance(w, peft.AdapterWeight)) == [
        "layers/mlp/down_proj/kernel",
        "layers/self_attn/o_proj/kernel",
    ]
    one = layer0(kernel(adapted, "o_proj"))
    y, y_adapted = X @ one.base, one.linear(X)
    rel = float(jnp.linalg.norm(y_adapted - y) / jnp.linalg.norm(y))
    assert 0 < rel < 1e-2, rel
    with pytest.raises(peft.MergeError, match="nonlinear"):
        peft.merge(adapted)


def test_dropout_keys_per_layer_and_off_at_eval(llama):
    _, params = llama
    adapted = peft.lora(params, ["q_proj"], rank=4, dropout=0.5, rng=KEY)
    adapted["layers"]["self_attn"]["q_proj"]["kernel"] = randomized(kernel(adapted, "q_proj"))
    keyed = peft.with_dropout_rng(adapted, jax.random.PRNGKey(7))
    keys = kernel(keyed, "q_proj").dropout_rng
    assert keys.shape[0] == 2 and not np.array_equal(keys[0], keys[1])
    train, train_again = layer0(kernel(keyed, "q_proj")), layer0(kernel(keyed, "q_proj"))
    plain = layer0(kernel(adapted, "q_proj"))
    assert not np.allclose(train.linear(X), plain.linear(X))
    np.testing.assert_array_equal(train.linear(X), train_again.linear(X))
    off = layer0(kernel(peft.with_dropout_rng(keyed, None), "q_proj"))
    np.testing.assert_array_equal(off.linear(X), plain.linear(X))


@struct.dataclass
class Int8Weight:
    """A real (if simple) quantized weight leaf: int8 values and a scale per output column."""

    values: jax.Array  # [..., in, out] int8
    scale: jax.Array  # [..., out]

    @classmethod
    def quantize(cls, w: jax.Array) -> Int8Weight:
        scale = jnp.max(jnp.abs(w), axis=-2) / 127
        return cls(jnp.round(w / scale[..., None, :]).astype(jnp.int8), scale)

    def materialize(self) -> jax.Array:
        return self.values.astype(jnp.float32) * self.scale[..., None, :]

    def linear(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x, self.values.astype(x.dtype)) * self.scale.astype(x.dtype)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_over_a_quantized_base(llama, method):
    _, params = llama
    quantized = dict(params)
    quantized["layers"] = jax.tree.map(lambda x: x, params["layers"])
    w = kernel(params, "v_proj")
    quantized["layers"]["self_attn"]["v_proj"]["kernel"] = Int8Weight.quantize(w)
    adapted = getattr(peft, method)(quantized, ["v_proj"], rank=4, rng=KEY)
    leaf = randomized(kernel(adapted, "v_proj"))
    assert isinstance(leaf.base, Int8Weight)
    one = layer0(leaf)
    np.testing.assert_allclose(one.linear(X), X @ one.materialize(), atol=1e-5, rtol=0)
    adapted["layers"]["self_attn"]["v_proj"]["kernel"] = leaf
    labels = kernel(peft.param_labels(adapted), "v_proj")
    assert (labels.base.values, labels.base.scale, labels.lora_a) == ("frozen", "frozen", "lora_a")
    trainable, total = peft.count_parameters(adapted)
    assert total == sum(x.size for x in jax.tree.leaves(params)) + trainable
    assert isinstance(kernel(peft.disable(adapted), "v_proj"), Int8Weight)


# ------------------------------------------------------------------------------- tree helpers
def test_leaf_stops_the_gradient_to_its_base(llama):
    _, params = llama
    leaf = layer0(randomized(kernel(peft.lora(params, ["q_proj"], rank=4, rng=KEY), "q_proj")))
    grads = jax.grad(lambda w: jnp.sum(linear(X, w) ** 2))(leaf)
    assert float(jnp.abs(grads.base).max()) == 0.0
    assert float(jnp.abs(grads.lora_a).max()) > 0.0 and float(jnp.abs(grads.lora_b).max()) > 0


def test_labels_masks_split_combine_disable(llama):
    _, params = llama
    assert set(jax.tree.leaves(peft.param_labels(params))) == {"trainable"}  # full fine-tuning
    adapted = peft.dora(params, ["q_proj"], rank=4, rng=KEY)
    labels = peft.param_labels(adapted)
    leaf_labels = kernel(labels, "q_proj")
    assert (leaf_labels.base, leaf_labels.lora_a, leaf_labels.lora_b, leaf_labels.magnitude) == (
        "frozen",
        "lora_a",
        "lora_b",
        "dora_magnitude",
    )
    assert labels["norm"]["scale"] == "frozen" and labels["embed_tokens"]["embedding"] == "frozen"
    trainable, rest = peft.split_trainable(adapted)
    assert len(jax.tree.leaves(trainable)) == 3
    label_part, _ = peft.split_trainable(labels)  # labels split like the params they label
    assert jax.tree.leaves(label_part) == ["lora_a", "lora_b", "dora_magnitude"]
    assert jax.tree.structure(peft.combine(trainable, rest)) == jax.tree.structure(adapted)
    for a, b in zip(jax.tree.leaves(peft.disable(adapted)), jax.tree.leaves(params), strict=True):
        assert a is b


def test_print_trainable_parameters(llama, capsys):
    _, params = llama
    line = peft.print_trainable_parameters(peft.lora(params, ["q_proj"], rank=4, rng=KEY))
    trainable = 2 * (64 * 4 + 4 * 64)
    total = sum(x.size for x in jax.tree.leaves(params)) + trainable
    expected = (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
    assert line == expected and capsys.readouterr().out.strip() == expected


# ------------------------------------------------------------------------------- freeze
def test_freeze_layers_follow_llamafactory(llama):
    _, params = llama
    last = peft.freeze(params, trainable_layers=1)
    masks = peft.layer_trainable_mask(last)
    assert kernel(masks, "q_proj").tolist() == [False, True]
    assert masks["layers"]["input_layernorm"]["scale"].tolist() == [False, True]
    assert peft.param_labels(last)["embed_tokens"]["embedding"] == "frozen"
    first_mlp = peft.freeze(params, trainable_layers=-1, trainable_modules="mlp")
    labels = peft.param_labels(first_mlp)
    assert kernel(labels, "q_proj") == "frozen"
    assert kernel(peft.layer_trainable_mask(first_mlp), "up_proj", "mlp").tolist() == [True, False]
    everything = peft.freeze(params, 2, extra_modules=["embed_tokens", "norm"])
    assert peft.layer_trainable_mask(everything)["layers"]["mlp"]["up_proj"]["kernel"] is None
    assert set(jax.tree.leaves(peft.param_labels(everything))) == {"frozen", "trainable"}
    assert peft.param_labels(everything)["lm_head"]["kernel"] == "frozen"
    label_part, _ = peft.split_trainable(peft.param_labels(last))
    assert set(jax.tree.leaves(label_part)) == {"trainable"}
    trainable, total = peft.count_parameters(last)
    layer_arrays = sum(x.size for x in jax.tree.leaves(params["layers"]))
    assert trainable == layer_arrays // 2 and total == sum(x.size for x in jax.tree.leaves(params))


def test_freeze_record_survives_jit_and_tree_map(llama):
    _, params = llama
    frozen = peft.freeze(params, 1)
    doubled = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p))(frozen)
    assert isinstance(doubled, peft.FreezeParams) and doubled.spec == frozen.spec
    updates = jax.tree.map(jnp.ones_like, frozen)
    zeroed = peft.zero_frozen_layers(updates, frozen)
    assert kernel(zeroed, "q_proj")[0].max() == 0 and kernel(zeroed, "q_proj")[1].min() == 1


def test_freeze_unknown_module_is_an_error(llama):
    _, params = llama
    with pytest.raises(peft.TargetError, match=r"\['attn'\] not found.*self_attn"):
        peft.freeze(params, 1, trainable_modules=["attn"])
    with pytest.raises(peft.TargetError, match=r"extra_modules \['wte'\].*embed_tokens"):
        peft.freeze(params, 1, extra_modules=["wte"])
