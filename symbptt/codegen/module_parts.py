"""Parts shared by the rolled and unrolled modules: sizes, and the function bodies assembled."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..core.graph import T_SYMBOL, Symbols
from .lines import Code

__all__ = ["SIZE_NAMES", "assemble", "size_names"]

#: The names of the sizes in generated code.
SIZE_NAMES = {"n_in": "n_in", "n_hidden": "n_hidden", "n_out": "n_out", "batch": "m"}


def size_names(symbols: Symbols, batch: str = "m") -> dict[Any, str]:
    """Size symbols (and T) -> their names in code."""
    names = {symbols.sizes[key]: value for key, value in SIZE_NAMES.items()}
    names[symbols.sizes["batch"]] = batch
    names[T_SYMBOL] = "T"
    return names


def assemble(
    forward: Code,
    loss: Code,
    backward: Code,
    extras: Code,
    gradients: Mapping[str, str],
    params: Iterable[str],
    loss_name: str,
    outputs: set[str],
    extra_outputs: Iterable[str],
    arguments: Iterable[str] = (),
) -> dict[str, Any]:
    """The module's function bodies, each pruned to what is used.

    The cache holds the forward arrays that the loss, the backward pass and the
    extras read, and the ``outputs`` the module returns; ``arguments`` are the
    forward function's arguments that the code reads under their own names.
    """
    params = list(params)
    extras = extras.prune({"dX", *extra_outputs})
    held = {v.split("[")[0] for v in gradients.values()}  # dW, or dW_cat of dW_cat[0:n]
    backward = backward.prune({v for v in held if v.isidentifier()} | extras.uses)
    loss = loss.prune({loss_name})
    local = set(loss.defines) | set(backward.defines) | set(extras.defines)
    downstream = ((loss.uses | backward.uses | extras.uses) - local) | outputs
    names = ["T", "m", "n_in", *arguments, *forward.defines]
    cache = _ordered(n for n in names if n in downstream)
    forward = _unpack_shape(forward.prune(set(cache)), cache)
    return {
        "forward": _with_inputs(forward, params, [], []),
        "loss": _with_inputs(loss, [], cache, loss.defines),
        "backward": _with_inputs(
            backward, params, cache, backward.defines + extras.defines, extras.uses
        ),
        "extras": extras.lines(),
        "cache": cache,
        "gradients": gradients,
        "loss_name": loss_name,
    }


def _unpack_shape(code: Code, cache: list[str]) -> Code:
    """``T, m, n_in = X.shape`` with ``_`` for the sizes nothing reads."""
    entries = list(code.entries)
    for i, (line, uses, defines, pure) in enumerate(entries):
        if line == "T, m, n_in = X.shape":
            later = set().union(*(u for _, u, _, _ in entries[i + 1 :])) | set(cache)
            names = [n if n in later else "_" for n in ("T", "m", "n_in")]
            entries[i] = (f"{', '.join(names)} = X.shape", uses, defines, pure)
            if names == ["_", "_", "_"]:
                del entries[i]
            break
    return Code(entries)


def _ordered(names: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


def _with_inputs(
    body: Code,
    params: Iterable[str],
    cache: list[str],
    local: list[str],
    more_uses: Iterable[str] = (),
) -> list[str]:
    """``body`` preceded by the look-ups of the parameters and cached arrays it reads."""
    uses = body.uses | set(more_uses)
    head = [f'{name} = params["{name}"]' for name in params if name in uses]
    head += [f'{name} = cache["{name}"]' for name in cache if name in uses and name not in local]
    return head + body.lines()
