"""Which weights a transform touches: `targets` as a regex, module names, a predicate or
`"all-linear"`, resolved against the '/'-joined path of each leaf.

Paths read like the params: `layers/self_attn/q_proj/kernel` for a jaxtune decoder,
`params/Dense_0/kernel` for a linen model, `l1/kernel` for an NNX state (the trailing `value`
of an NNX Variable is dropped). Only weight matrices are candidates: leaves named `kernel` (plain
arrays `[..., in, out]`, or weight leaves such as quantized kernels). Leading axes before
`[in, out]` are stacked layers (jaxtune scans them) and every adapter array carries them too.

    targets = "all-linear"                         # every kernel except lm_head (PEFT's meaning)
    targets = ["q_proj", "v_proj"]                 # module names, like PEFT's target_modules
    targets = r"layers/self_attn/(q|v)_proj"       # regex searched in the path
    targets = lambda path, w: w.shape[-1] > 256    # predicate on (path, weight)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxtune.models.layers import LinearLeaf
from jaxtune.peft.errors import TargetError

Targets = str | Sequence[str] | Callable[[str, Any], bool]
KERNEL = "kernel"
ALL_LINEAR = "all-linear"
EXCLUDED_FROM_ALL_LINEAR = ("lm_head",)


def key_name(key: Any) -> str:
    """One entry of a jax key path as a string."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(keypath: Sequence[Any]) -> str:
    """A jax key path as 'a/b/c' (an NNX Variable's trailing 'value' dropped)."""
    names = [key_name(k) for k in keypath]
    if len(names) > 1 and names[-1] == "value" and type(keypath[-1]).__name__ == "GetAttrKey":
        names = names[:-1]
    return "/".join(names)


def is_weight_leaf(x: Any) -> bool:
    """A non-array weight leaf (adapter, quantized kernel) that carries its own matmul.

    Checked on the class: an NNX Variable forwards attribute access to the leaf it holds."""
    return isinstance(x, LinearLeaf) and callable(getattr(type(x), "linear", None))


def is_kernel(path: str, leaf: Any) -> bool:
    """A weight matrix `[..., in, out]`: the candidates of every target spec."""
    if path.rsplit("/", 1)[-1] != KERNEL:
        return False
    return is_weight_leaf(leaf) or getattr(leaf, "ndim", 0) >= 2


def matcher(targets: Targets) -> Callable[[str, Any], bool]:
    """A predicate (path, leaf) -> bool for a target spec (kernels only)."""
    if callable(targets):
        user = targets
        return lambda path, leaf: is_kernel(path, leaf) and bool(user(path, leaf))
    if isinstance(targets, str) and targets == ALL_LINEAR:
        return lambda path, leaf: (
            is_kernel(path, leaf)
            and not any(name in path.split("/") for name in EXCLUDED_FROM_ALL_LINEAR)
        )
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise TargetError(f"targets={targets!r} is not a valid regex: {e}") from None
        return lambda path, leaf: is_kernel(path, leaf) and pattern.search(path) is not None
    names = [str(t) for t in targets]
    if not names:
        raise TargetError("targets=[] selects nothing; name at least one module, e.g. ['q_proj']")

    def by_name(path: str, leaf: Any) -> bool:
        module = path.rsplit("/", 1)[0]
        return is_kernel(path, leaf) and any(
            module == n or module.endswith("/" + n.replace(".", "/")) for n in names
        )

    return by_name


def leaves_with_paths(params: Any) -> list[tuple[str, Any]]:
    """(path, leaf) of every leaf, weight leaves kept whole."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_weight_leaf)[0]
    return [(path_str(kp), leaf) for kp, leaf in flat]


def select(params: Any, targets: Targets) -> list[str]:
    """The paths `targets` selects, or a `TargetError` that lists the kernels there are."""
    match = matcher(targets)
    flat = leaves_with_paths(params)
    chosen = [path for path, leaf in flat if match(path, leaf)]
    if not chosen:
        kernels = [path for path, leaf in flat if is_kernel(path, leaf)]
        shown = ", ".join(kernels[:8]) + (", ..." if len(kernels) > 8 else "")
        raise TargetError(
            f"targets={targets!r} matches no weight matrix. Candidates are leaves named "
            f"'kernel' [..., in, out]; this tree has {len(kernels)}: {shown or 'none'}"
        )
    return chosen


def map_selected(params: Any, chosen: Sequence[str], fn: Callable[[str, Any], Any]) -> Any:
    """Replace each leaf whose path is in `chosen` by `fn(path, leaf)`."""
    wanted = set(chosen)

    def visit(keypath: Sequence[Any], leaf: Any) -> Any:
        path = path_str(keypath)
        return fn(path, leaf) if path in wanted else leaf

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=is_weight_leaf)
