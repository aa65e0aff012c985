"""`optim.build(config, params, labels)`: one optax transformation over a labelled params tree.

Every array gets a group from its label (see `labels.py`); `optax.multi_transform` maps groups to
transformations:

    frozen                 set_to_zero(): no state, params stay bit-identical
    <core>[:lr*k][:decay]  core direction -> decoupled weight decay -> -lr(step) * k
        core = adamw (scale_by_adam) | sgd (momentum) | adafactor (factored RMS) |
               galore (low-rank projected Adam on the selected matrices; adamw elsewhere) |
               badam (Adam on the active block of layers; arrays outside the blocks frozen)
        k    = LoRA+ ratio on lora_b and DoRA magnitudes, embedding lr / lr on embeddings
        decay on everything but norms, biases and DoRA magnitudes (when weight_decay > 0)

around which sit: zeroing of frozen gradients -> global-norm clipping over the trainable ones ->
the groups; fp32 math with the state stored in fp32 (bf16 for pure_bf16); and optionally
`optax.MultiSteps` for `grad_accum_steps`. Arrays of which `peft.freeze` trains only some stacked
layers keep state for those layers only (`subset.py`).

    tx = optim.build(config.optim, params)                       # full fine-tuning
    tx = optim.build(config.optim, trainable, labels=labels)     # PEFT: the trainable split
    state = tx.init(params); updates, state = tx.update(grads, state, params)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtune.optim.accumulate import accumulate
from jaxtune.optim.badam import badam, blocks_for
from jaxtune.optim.config import check_config
from jaxtune.optim.errors import OptimError
from jaxtune.optim.galore import galore
from jaxtune.optim.labels import (
    DENSE2D,
    EMBEDDING,
    FROZEN,
    NO_DECAY,
    TRAINABLE,
    LeafInfo,
    describe,
    flatten,
)
from jaxtune.optim.loraplus import lr_scale
from jaxtune.optim.precision import fp32_math, state_dtype
from jaxtune.optim.schedules import schedule
from jaxtune.optim.subset import layer_subset


@dataclasses.dataclass(frozen=True)
class Group:
    """Arrays that share one transformation."""

    core: str  # frozen | adamw | sgd | adafactor | galore | badam
    lr_scale: float = 1.0
    decay: bool = False

    @property
    def name(self) -> str:
        if self.core == FROZEN:
            return FROZEN
        parts = [self.core]
        if self.lr_scale != 1.0:
            parts.append(f"lr*{self.lr_scale:g}")
        if self.decay:
            parts.append("decay")
        return ":".join(parts)


# ----------------------------------------------------------------------------- groups
def _galore_matcher(targets: Any) -> Callable[[str, Any], bool]:
    from jaxtune.peft.errors import TargetError
    from jaxtune.peft.select import matcher

    if isinstance(targets, str) and targets != "all-linear" and "," in targets:
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        return matcher(targets)
    except TargetError as e:
        raise OptimError(f"optim.galore.targets: {e}") from None


def _badam_member(config: Any, info: LeafInfo) -> str | None:
    """'layers', 'embedding', 'head' or None (not in any block: frozen)."""
    if info.stacked:
        return "layers"
    if info.kind == EMBEDDING:
        return "embedding" if config.badam.include_embedding else None
    return "head" if config.badam.include_lm_head else None


def _core(config: Any, info: LeafInfo, leaf: Any, galore_match: Callable | None) -> str:
    if info.role == FROZEN:
        return FROZEN
    if config.name == "badam":
        if info.role != TRAINABLE or info.layers is not None:
            raise OptimError(
                f"optim.name='badam' trains whole blocks of layers of the full model, but "
                f"{info.path} is labelled {info.role!r}"
                + (" with only some layers trainable" if info.layers is not None else "")
                + ". Use peft.method='none' with badam, or another optim.name."
            )
        return "badam" if _badam_member(config, info) else FROZEN
    if config.name == "galore":
        eligible = info.role == TRAINABLE and info.kind == DENSE2D
        return "galore" if eligible and galore_match(info.path, leaf) else "adamw"
    return config.name


def assign(config: Any, params: Any, labels: Any = None) -> tuple[list[Any], Any]:
    """([(LeafInfo, Group) or None per leaf position], treedef)."""
    infos, treedef = describe(params, labels)
    leaves = [leaf for _, leaf in flatten(params)[0]]
    match = _galore_matcher(config.galore.targets) if config.name == "galore" else None
    out: list[Any] = []
    for info, leaf in zip(infos, leaves, strict=True):
        if info is None:
            out.append(None)
            continue
        core = _core(config, info, leaf, match)
        if core == FROZEN:
            out.append((info, Group(FROZEN)))
            continue
        decay = config.weight_decay > 0 and info.kind != NO_DECAY
        out.append((info, Group(core, lr_scale(config, info), decay)))
    _check_groups(config, [x for x in out if x is not None])
    return out, treedef


def _check_groups(config: Any, pairs: Sequence[tuple[LeafInfo, Group]]) -> None:
    cores = {g.core for _, g in pairs}
    if config.name == "galore" and "galore" not in cores:
        matrices = [i.path for i, _ in pairs if i.kind == DENSE2D and i.role == TRAINABLE]
        shown = ", ".join(matrices[:6]) + (", ..." if len(matrices) > 6 else "")
        if not shown:
            shown = "none (adapters or frozen weights only: GaLore is for full fine-tuning)"
        raise OptimError(
            f"optim.galore.targets={config.galore.targets!r} selects no trainable 2-D weight "
            "(GaLore projects weight matrices [in, out] or [L, in, out]); trainable matrices "
            f"here: {shown}. Use peft.method='none' and targets such as 'all-linear'."
        )
    if config.name == "badam":
        stacked = [i for i, g in pairs if g.core == "badam" and i.stacked]
        if not stacked:
            raise OptimError(
                "optim.name='badam' needs decoder layers stacked on a leading axis under "
                "'layers/' (jaxtune models); this params tree has none that train."
            )
        sizes = {i.shape[0] for i in stacked}
        if len(sizes) != 1:
            raise OptimError(f"optim.name='badam': stacked leaves disagree on L: {sorted(sizes)}")


def plan(config: Any, params: Any, labels: Any = None) -> dict[str, str]:
    """{array path: group name}: what `build` will do with each array (for logs and tests)."""
    pairs, _ = assign(config, params, labels)
    return {info.path: group.name for info, group in filter(None, pairs)}


# ----------------------------------------------------------------------------- transforms
def _core_tx(config: Any, core: str) -> optax.GradientTransformation:
    if core == "adamw":
        return optax.scale_by_adam(config.b1, config.b2, config.eps)
    if core == "sgd":
        return optax.trace(config.momentum) if config.momentum > 0 else optax.identity()
    if core == "adafactor":
        return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0))
    g = config.galore
    return galore(g.rank, g.update_proj_gap, g.scale, g.proj_type, config.b1, config.b2, config.eps)


def _badam_tx(config: Any, group: Group, pairs: Sequence[tuple[LeafInfo, Group]]):
    b = config.badam
    members = {i.path: _badam_member(config, i) for i, g in pairs if g.core == "badam"}
    num_layers = next(i.shape[0] for i, g in pairs if g.core == "badam" and i.stacked)
    blocks = blocks_for(
        num_layers, b.block_size, "embedding" in members.values(), "head" in members.values()
    )
    extra_of = {
        i.path: blocks.index(members[i.path]) for i, g in pairs if g == group and not i.stacked
    }
    wd = config.weight_decay if group.decay else 0.0
    return badam(
        blocks, extra_of, b.switch_every, b.switch_mode, b.seed, b.start_block,
        config.b1, config.b2, config.eps, wd,
    )  # fmt: skip


def _group_tx(
    config: Any, group: Group, pairs: Sequence[tuple[LeafInfo, Group]], lr: optax.Schedule
) -> optax.GradientTransformation:
    if group.core == FROZEN:
        return optax.set_to_zero()
    scaled = lr if group.lr_scale == 1.0 else (lambda count: group.lr_scale * lr(count))
    if group.core == "badam":
        direction = _badam_tx(config, group, pairs)
    else:
        parts = [_core_tx(config, group.core)]
        if group.decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        partial = {i.path: i.layers for i, g in pairs if g == group and i.layers is not None}
        direction = layer_subset(optax.chain(*parts), partial)
    return optax.chain(direction, optax.scale_by_learning_rate(scaled))


def _zero_where(mask: Any) -> optax.GradientTransformation:
    """Stateless: zero updates where `mask` is True (frozen grads out of the clipping norm)."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(lambda u, m: jnp.zeros_like(u) if m else u, updates, mask), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build(
    config: Any, params: Any, labels: Any = None, total_steps: int | None = None
) -> optax.GradientTransformation:
    """The optimizer of `params` per the `optim` config section.

    params: the tree the optimizer updates (jax arrays or `jax.eval_shape` structs; None holes
        allowed, as in `peft.split_trainable`'s trainable part).
    labels: role strings shaped like `params` (`peft.param_labels`); None derives them.
    total_steps: the run's step count, for schedules when `optim.total_steps` is 0.
    """
    check_config(config)
    pairs, treedef = assign(config, params, labels)
    present = [p for p in pairs if p is not None]
    lr = schedule(config, total_steps)
    groups = {g.name: g for _, g in present}
    transforms = {name: _group_tx(config, g, present, lr) for name, g in groups.items()}
    label_tree = treedef.unflatten([None if p is None else p[1].name for p in pairs])
    chain = []
    if FROZEN in groups:
        frozen = treedef.unflatten([None if p is None else p[1].core == FROZEN for p in pairs])
        chain.append(_zero_where(frozen))
    if config.max_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(config.max_grad_norm))
    chain.append(optax.multi_transform(transforms, label_tree))
    tx = fp32_math(optax.chain(*chain), state_dtype(config.mixed_precision))
    return accumulate(tx, int(config.grad_accum_steps))
