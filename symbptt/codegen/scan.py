"""A function body's Python loops over the steps, rewritten as ``jax.lax.scan``.

The rolled module of a composed model (:mod:`~symbptt.codegen.numpy_composed`)
prints its loops as ``for t in range(...):`` over stacked arrays ``q[0 .. T + 1]``
that each step writes at ``t`` (in JAX ``q = jax.lax.dynamic_update_index_in_dim(q,
v, t, 0)``, the printer's ``set_step``) and reads at ``t`` and its neighbours.
``jax.jit`` traces a Python loop into straight-line code T steps long: the
two-layer bidirectional masked LSTM of ``benchmarks/compose.py`` at T = 50 took
90 s to its first result (3.5 s as scans).  :func:`scan_loops` turns each such
loop into a nested step function and one ``jax.lax.scan`` over ``t``, which XLA
compiles once; the carry
is what the loop writes that exists before it (the stacked arrays, a running
sum), the rest of what it reads is closed over.  The one-cell module's scan
(:class:`~symbptt.codegen.jax_rolled.JaxRolledModule`) comes from its schedule;
this one from the printed loop, whose reads and writes :class:`Code` records.
"""

from __future__ import annotations

import re

from .lines import WIDTH, Code

__all__ = ["scan_loops", "tuple_line"]

#: A loop over the steps as the rolled modules print it: ``range(first, stop[, -1])``.
_LOOP = re.compile(r"for t in range\((?P<first>[^,]+), (?P<stop>[^,]+)(?P<down>, -1)?\):")
_T_MINUS = re.compile(r"T - (?P<k>\d+)")


def scan_loops(code: Code, arange: str = "jnp.arange") -> Code:
    """``code`` with each top-level ``for t in range(...)`` loop as a ``jax.lax.scan``.

    A loop's body is the lines indented under it.  Its carry is every name the body
    defines that is defined before the loop; a name the body defines that is read after
    the loop must be one of those (else the loop's last value would be lost: an
    error).  A loop that is not over ``range(first, stop[, -1])`` raises rather than
    being printed wrong; every other line is kept as it is.
    """
    out = Code()
    entries = code.entries
    count = 0
    i = 0
    while i < len(entries):
        line = entries[i][0]
        if not line.startswith("for "):
            out.entries.append(entries[i])
            i += 1
            continue
        match = _LOOP.fullmatch(line)
        if match is None:
            raise ValueError(f"a loop the scan cannot read: {line!r}")
        end = i + 1
        while end < len(entries) and entries[end][0].startswith("    "):
            end += 1
        body = Code(entries[i + 1 : end])
        count += 1
        _scan(out, body, Code(entries[end:]), match, f"loop_{count}", arange)
        i = end
    return out


def _scan(out: Code, body: Code, after: Code, loop: re.Match[str], name: str, arange: str) -> None:
    """The loop ``body`` as the step function ``name`` and its scan, appended to ``out``."""
    before = set(out.defines)
    written = list(dict.fromkeys(body.defines))
    carry = [n for n in written if n in before]
    lost = sorted((set(written) - before) & after.uses)
    if lost:
        raise ValueError(f"a loop's value read after it and not carried: {', '.join(lost)}")
    if not carry:
        raise ValueError(f"a loop that writes nothing read after it: {name}")
    first, stop = loop["first"], loop["stop"]
    if loop["down"]:  # first, first - 1, ..., stop + 1: the ascending range, reversed
        steps, reverse = f"{arange}({_plus_one(stop)}, {_plus_one(first)})", ", reverse=True"
    else:
        steps, reverse = f"{arange}({first}, {stop})", ""
    reads = body.uses - set(written) - {"t"}
    range_reads = {"T"} & {*first.split(), *stop.split()}
    out.add("")
    if len(carry) == 1:
        (value,) = carry
        out.add(f"def {name}({value}, t):", set())
        out.extend(body)
        out.add(f"    return {value}, None", set())
        out.add("")
        scan = f"jax.lax.scan({name}, {value}, {steps}{reverse})"
        out.add(f"{value}, _ = {scan}", {value, *reads, *range_reads}, value)
        return
    out.add(f"def {name}(carry, t):", set())
    out.add("    " + tuple_line(carry, "", " = carry", 8).replace("\n", "\n    "), set())
    out.extend(body)
    out.add("    " + tuple_line(carry, "return ", ", None", 8).replace("\n", "\n    "), set())
    out.add("")
    out.add(tuple_line(carry, "carry = ", "", 4), set(carry), "carry")
    scan = f"jax.lax.scan({name}, carry, {steps}{reverse})"
    out.add(f"carry, _ = {scan}", {"carry", *reads, *range_reads}, "carry")
    out.add(tuple_line(carry, "", " = carry", 4), {"carry"})  # defined before the loop


def _plus_one(text: str) -> str:
    """``text + 1`` for the bounds the rolled modules print: a number, T, or T - k."""
    if text.isdigit():
        return str(int(text) + 1)
    if text == "T":
        return "T + 1"
    minus = _T_MINUS.fullmatch(text)
    if minus is None:
        raise ValueError(f"a loop bound the scan cannot read: {text!r}")
    k = int(minus["k"]) - 1
    return "T" if k == 0 else f"T - {k}"


def tuple_line(names: list[str], head: str, tail: str, indent: int) -> str:
    """``head(a, b, c)tail`` on one line, or one name a line (with the trailing comma that
    keeps ``ruff format`` from joining them) where that is longer than :data:`WIDTH`;
    without ``head`` an unpacking target (no parentheses on one line)."""
    one = ", ".join(names)
    line = f"{head}({one}){tail}" if head else f"{one}{tail}"
    if indent + len(line) <= WIDTH:
        return line
    inner = "".join(f"\n    {name}," for name in names)
    return f"{head}({inner}\n){tail}"
