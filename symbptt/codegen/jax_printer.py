"""The JAX backend's printer: the NumPy printer with ``jax.numpy``'s spellings.

``jax.numpy`` mirrors NumPy's functions, so the derivation's expressions print
the same way (``@``, ``*``, ``.T``, ``.sum(axis=..., keepdims=True)``) with the
module ``jnp``; a NumPy function without an entry in :data:`JAX_FUNCTIONS` is
an error that names it, never a silent fallback.

JAX arrays are immutable: the printed code is functional.  There is no
in-place lowering (``np.dot(a, b, out=z)``): every statement is
``z = <expression>``, and a write into a step of a stacked array is
``q_seq = q_seq.at[t].set(q_t)`` (:meth:`JaxPrinter.set_item`), which XLA
performs in place under ``jax.jit``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .lines import Code, SharedPrinter
from .numpy_printer import NUMPY_CALLS, activation_source
from .scan import scan_loops

__all__ = ["JAX_FUNCTIONS", "JaxPrinter", "jax_helper_source"]

#: NumPy function -> its jax.numpy spelling (the same mathematics, elementwise).
JAX_FUNCTIONS: dict[str, str] = {f"numpy.{name}": f"jnp.{name}" for name in NUMPY_CALLS}


class JaxPrinter(SharedPrinter):
    """Prints for ``import jax.numpy as jnp``: functional statements, :data:`JAX_FUNCTIONS`."""

    printmethod = "_symbptt_jax"
    _default_settings: ClassVar[dict[str, Any]] = dict(SharedPrinter._default_settings)
    spellings = JAX_FUNCTIONS
    backend = "jax"
    cheap_arrays_of_steps = True  # XLA's buffers (see SharedPrinter)

    # -- statements ---------------------------------------------------------------------
    def call_into(self, function: str, args: list[str], out: str) -> str:
        """JAX writes into no array: the functional module never lowers in place."""
        raise NotImplementedError(
            f"the jax backend writes no array in place (asked for {function} into {out})"
        )

    def elementwise_into(self, expr: Any, arg: str, out: str) -> str | None:
        return None

    def copy_of(self, code: str) -> str:
        """JAX arrays are immutable and XLA chooses layouts: no copy."""
        return code

    def set_item(self, array: str, index: str, value: str) -> str:
        """``array[index] = value`` as JAX spells it: a new array, in place under jit."""
        return f"{array} = {array}.at[{index}].set({value})"

    def set_step(self, array: str, index: str, value: str) -> str:
        """``array[index] = value`` for a loop's step ``index``, in bounds by construction:
        ``jax.lax.dynamic_update_index_in_dim``, which XLA lowers to one in-place
        dynamic-update-slice (``.at[t].set`` adds the bounds test of its drop-out-of-bounds
        mode: a select and a reduction of the index at every step)."""
        return f"{array} = jax.lax.dynamic_update_index_in_dim({array}, {value}, {index}, 0)"

    def add_item(self, array: str, index: str, value: str) -> str:
        """``array[index] += value`` as JAX spells it."""
        return f"{array} = {array}.at[{index}].add({value})"

    def loops(self, code: Code) -> Code:
        """Each loop as one ``jax.lax.scan`` (:func:`~symbptt.codegen.scan.scan_loops`):
        ``jax.jit`` would trace a Python loop into T copies of its body."""
        return scan_loops(code, self._module_format("numpy.arange"))


def jax_helper_source(name: str) -> str:
    """The source of a module-level helper of the JAX module (as :func:`helper_source`).

    ``softmax`` and ``logsumexp`` are JAX's own (both subtract the maximum);
    ``logsumexp`` given the softmax takes the largest entry's form, as NumPy's does.
    An activation's helper is its :func:`safe_form` printed by :class:`JaxPrinter`.
    """
    if name == "softmax":
        return (
            "def softmax(x, axis):\n"
            '    """exp(x) / sum(exp(x)) along axis, computed with the maximum subtracted."""\n'
            "    return jax.nn.softmax(x, axis=axis)\n"
        )
    if name == "logsumexp":
        return (
            "def logsumexp(x, axis, softmax=None):\n"
            '    """log(sum(exp(x))) along axis, kept as a length-1 axis.\n'
            "\n"
            "    softmax_k(x) = exp(x_k) / sum(exp(x)) gives x_k - log(softmax_k(x)) for any k:\n"
            "    given the softmax, that at the largest x_k (no exp); else JAX's logsumexp.\n"
            '    """\n'
            "    if softmax is not None:\n"
            "        top = x.max(axis=axis, keepdims=True)\n"
            "        return top - jnp.log(softmax.max(axis=axis, keepdims=True))\n"
            "    return jax.nn.logsumexp(x, axis=axis, keepdims=True)\n"
        )
    return activation_source(name, JaxPrinter({}))
