"""Which weights `quantize` touches: `targets` as `"all-linear"`, a regex, module names or a
predicate, matched against the '/'-joined path of each leaf (the same spec forms as
`jaxtune.peft`).

    targets = "all-linear"                      # every kernel except lm_head (the default)
    targets = ["q_proj", "v_proj"]              # module names
    targets = r"layers/mlp/.*"                  # regex searched in the path (kernels only)
    targets = lambda path, w: w.shape[-1] > 64  # predicate on (path, leaf): any leaf it accepts

Only weight matrices can be quantized: leaves named `kernel`, `[..., in, out]` with the leading
axes being stacked layers. A target that is anything else (a norm scale, a bias, an embedding
table) is an error, and so is a kernel that is already quantized or already carries adapters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxtune.models.layers import LinearLeaf
from jaxtune.quant.errors import QuantizationError
from jaxtune.quant.leaf import QuantizedWeight

Targets = str | Sequence[str] | Callable[[str, Any], bool]
ALL_LINEAR = "all-linear"
EXCLUDED_FROM_ALL_LINEAR = ("lm_head",)


def _name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaves_with_paths(params: Any) -> list[tuple[str, Any]]:
    """(path 'a/b/c', leaf) of every leaf; weight leaves (quantized, adapters) kept whole."""
    is_leaf = lambda x: isinstance(x, LinearLeaf)
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_leaf)[0]
    return [("/".join(_name(k) for k in keypath), leaf) for keypath, leaf in flat]


def is_kernel(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == "kernel"


def _matches(targets: Targets) -> Callable[[str, Any], bool]:
    """(path, leaf) -> selected? Names and regexes consider kernels only; a predicate sees all."""
    if callable(targets):
        return lambda path, leaf: bool(targets(path, leaf))
    if isinstance(targets, str) and targets == ALL_LINEAR:
        excluded = set(EXCLUDED_FROM_ALL_LINEAR)
        return lambda path, leaf: is_kernel(path) and not excluded & set(path.split("/"))
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise QuantizationError(f"targets={targets!r} is not a valid regex: {e}") from None
        return lambda path, leaf: pattern.search(path) is not None
    names = [str(t).replace(".", "/") for t in targets]
    if not names:
        raise QuantizationError("targets=[] selects nothing; name modules, e.g. ['q_proj']")

    def by_name(path: str, leaf: Any) -> bool:
        module = path.rsplit("/", 1)[0]
        return any(module == n or module.endswith("/" + n) for n in names)

    return by_name


def _check(path: str, leaf: Any) -> None:
    if isinstance(leaf, QuantizedWeight):
        raise QuantizationError(
            f"{path} is already quantized ({leaf.method}, block {leaf.block_size}); quantize the "
            "float params once (quant.dequantize(params) gives them back)"
        )
    if isinstance(leaf, LinearLeaf):
        raise QuantizationError(
            f"{path} already carries adapters ({type(leaf).__name__}); quantize first, then add "
            "them: peft.lora(quant.quantize(params), ...)"
        )
    shape = tuple(getattr(leaf, "shape", ()))
    if not is_kernel(path) or len(shape) < 2:
        raise QuantizationError(
            f"{path} (shape {shape}) is not a 2-D weight matrix: only kernels [in, out] (leaves "
            "named 'kernel', with leading layer axes when stacked) can be quantized. Narrow "
            "`targets`, e.g. targets='all-linear' or ['q_proj', 'v_proj']"
        )


def select(params: Any, targets: Targets) -> list[str]:
    """Paths of the kernels `targets` selects; a `QuantizationError` if one cannot be quantized
    or none is selected (the message lists the kernels there are)."""
    match = _matches(targets)
    flat = leaves_with_paths(params)
    named = not callable(targets)
    chosen = []
    for path, leaf in flat:
        if not match(path, leaf):
            continue
        if named and not is_kernel(path) and not isinstance(leaf, LinearLeaf):
            continue  # a regex or name also covers the module's bias: only its kernel counts
        _check(path, leaf)
        chosen.append(path)
    if chosen:
        return chosen
    others = [path for path, leaf in flat if named and match(path, leaf)]
    if others:
        _check(others[0], dict(flat)[others[0]])
    kernels = [path for path, _ in flat if is_kernel(path)]
    shown = ", ".join(kernels[:8]) + (", ..." if len(kernels) > 8 else "")
    raise QuantizationError(
        f"targets={targets!r} matches no weight matrix; the kernels of this tree are "
        f"({len(kernels)}): {shown or 'none'}"
    )


def map_selected(params: Any, chosen: Sequence[str], fn: Callable[[str, Any], Any]) -> Any:
    """Replace each leaf whose path is in `chosen` by `fn(path, leaf)`."""
    wanted = set(chosen)
    is_leaf = lambda x: isinstance(x, LinearLeaf)

    def visit(keypath: Sequence[Any], leaf: Any) -> Any:
        path = "/".join(_name(k) for k in keypath)
        return fn(path, leaf) if path in wanted else leaf

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=is_leaf)
