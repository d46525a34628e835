"""Named mistakes as mutations of the derivation's rules, for every cell.

Each wrong candidate is the gradient of a *mutated derivation*: the derivation's
own adjoint assignments with one rule changed (a carry dropped, a derivative
left out, a weight transposed, a step moved), written out as a SymPy
expression and handed to the checker like any user's candidate.  The checker
must find it NOT EQUAL and name that mutation; a candidate that a mutation
does not change stays EQUAL.  Hand-written wrong backward passes live in
``tests/test_check_cells.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from symbptt import ModelSpec
from symbptt.check import check
from symbptt.checker.mutations import Alteration, alterations
from symbptt.checker.work import _work
from symbptt.expr import mexpr

#: Every size given, so the checker's concrete model is the spec's own (same symbols).
SIZES: dict[str, Any] = {"n_in": 3, "n_hidden": 4, "n_out": 5, "batch": 2, "steps": 3}
CELLS = [("elman", "xh"), ("lstm", "xh"), ("gru", "xh"), ("lstm", "layered")]


def _mutated_gradient(spec: ModelSpec, alteration: Alteration, name: str) -> Any:
    """The gradient of ``name`` with ``alteration`` applied at every step, written out."""
    work = _work(spec)
    defs: dict[Any, Any] = {}
    for a in work.d.adjoints:
        new = alteration.rewrite(a)
        defs[a.target] = (a.expr if new is None else new).xreplace(defs)
    terms = [c.expr.xreplace(defs) for c in work.d.contributions if c.param == name]
    return mexpr.add(*terms)


def _cases(every: bool) -> list[tuple[str, str, int]]:
    """(cell, notation, index of the alteration): all of them, or the first of each name."""
    out = []
    for cell, notation in CELLS:
        spec = ModelSpec(cell=cell, notation=notation, **SIZES)
        seen: set[str] = set()
        for i, alteration in enumerate(alterations(_work(spec))):
            if every or alteration.name not in seen:
                out.append((cell, notation, i))
            seen.add(alteration.name)
    return out


def _check_named(cell: str, notation: str, index: int, exact_text: bool = True) -> None:
    """The mutated gradients are NOT EQUAL, always with a mistake, and this one is named.

    A gradient may not see the part of a mutation that tells it from a simpler
    one (an LSTM's ``dc[t+1] * f[t+2]`` at T = 3 is, for ∂L/∂W_hi, whose first
    term reads h[0] = 0, the dropped carry): there the simpler mutation is
    named, which holds in value too.  At least one gradient names this one.
    """
    spec = ModelSpec(cell=cell, notation=notation, **SIZES)
    alteration = alterations(_work(spec))[index]
    changed = named = 0
    for name in _work(spec).graph.params:
        candidate = _mutated_gradient(spec, alteration, name)
        result = check(spec, name, candidate, points=3)
        if result.ok:
            continue  # this gradient does not read what the mutation changes
        changed += 1
        assert result.mistakes, (alteration.text, result.explain())
        if alteration.name in result.mistake_names:
            named += 1
            if exact_text:  # (another site's mutation of the same kind may give the same values)
                assert alteration.text in result.explain()
        if named and changed >= 2:
            break
    assert changed, f"{alteration.text}: changes no gradient"
    assert named, f"{alteration.text}: named for no gradient"


@pytest.mark.parametrize(("cell", "notation", "index"), _cases(every=False))
def test_each_kind_of_mutation_is_named(cell: str, notation: str, index: int) -> None:
    _check_named(cell, notation, index)


@pytest.mark.slow
@pytest.mark.parametrize(("cell", "notation", "index"), _cases(every=True))
def test_every_mutation_is_named(cell: str, notation: str, index: int) -> None:
    _check_named(cell, notation, index, exact_text=False)


def test_the_mutations_of_a_gated_cell_need_no_role_tags() -> None:
    """The LSTM's sites come from its equations: both states' carries, five activations."""
    spec = ModelSpec(cell="lstm", **SIZES)
    found = alterations(_work(spec))
    places = {(a.name, a.place) for a in found}
    assert ("dropped_carry", "dc[t]") in places and ("dropped_carry", "dh[t]") in places
    derivatives = {a.site for a in found if a.name == "no_derivative"}
    assert len(derivatives) == 5  # i, f, o, g and tanh(c[t])
    texts = [a.text for a in found if a.name == "dropped_carry" and a.place == "dc[t]"]
    assert texts == ["the carry of the cell state is missing: dc[t] lacks dc[t+1] * f[t+1]"]


def test_a_mutation_at_one_step_only() -> None:
    """dc[t+1] * f[t+1] dropped at one step: named with that step."""
    spec = ModelSpec(cell="lstm", **{**SIZES, "steps": 4})
    work = _work(spec)
    (carry,) = [a for a in alterations(work) if a.name == "dropped_carry" and a.place == "dc[t]"]
    defs: dict[Any, Any] = {}
    for a in work.d.adjoints:
        new = carry.rewrite(a) if a.step == 2 else None
        defs[a.target] = (a.expr if new is None else new).xreplace(defs)
    candidate = mexpr.add(
        *[c.expr.xreplace(defs) for c in work.d.contributions if c.param == "W_hf"]
    )
    result = check(spec, "W_hf", candidate, points=3)
    assert result.mistake_names == ("dropped_carry",), result.explain()
    assert result.mistakes[0].steps == (2,), result.explain()
    assert "(at step 2 only)" in result.explain()


#: One gate's Jacobian factor swapped (issue 13): the alteration's own text, per cell.
SWAPPED = [
    ("lstm", "xh", "in delta_i[t]: (1 - f[t]) * f[t] where (1 - i[t]) * i[t] belongs"),
    ("lstm", "xh", "in do[t]: dh[t] * c[t] where dh[t] * tanh(c[t]) belongs"),
    ("lstm", "xh", "in di[t]: dc[t] * f[t] where dc[t] * g[t] belongs"),
    ("gru", "xh", "in delta_z[t]: (1 - r[t]) * r[t] where (1 - z[t]) * z[t] belongs"),
    ("gru", "xh", "in dh[t]: dh[t+1] * r[t+1] where dh[t+1] * z[t+1] belongs"),
    ("lstm", "layered", "in dC[t]: dH[t] * F[t] where dH[t] * O[t] belongs"),
]


@pytest.mark.parametrize(("cell", "notation", "text"), SWAPPED)
def test_a_swapped_jacobian_factor_is_named(cell: str, notation: str, text: str) -> None:
    spec = ModelSpec(cell=cell, notation=notation, **SIZES)
    found = [
        i
        for i, a in enumerate(alterations(_work(spec)))
        if a.name == "swapped_factor" and text in a.text
    ]
    assert len(found) == 1, [a.text for a in alterations(_work(spec))]
    _check_named(cell, notation, found[0])


def test_a_swapped_factor_at_one_step_only() -> None:
    """tanh(c[t]) replaced by c[t] in do[t] at one step: named with that step.

    (∂L/∂W_xo: with ∂L/∂W_ho, whose first term reads h[0] = 0, leaving out tanh's
    derivative from dc[2] as well changes nothing, and ``missing_activation`` holds too.)
    """
    spec = ModelSpec(cell="lstm", **SIZES)
    work = _work(spec)
    (swap,) = [a for a in alterations(work) if a.name == "swapped_factor" and a.place == "do[t]"]
    defs: dict[Any, Any] = {}
    for a in work.d.adjoints:
        new = swap.rewrite(a) if a.step == 2 else None
        defs[a.target] = (a.expr if new is None else new).xreplace(defs)
    candidate = mexpr.add(
        *[c.expr.xreplace(defs) for c in work.d.contributions if c.param == "W_xo"]
    )
    result = check(spec, "W_xo", candidate, points=3)
    assert result.mistake_names == ("swapped_factor",), result.explain()
    assert result.mistakes[0].steps == (2,), result.explain()
