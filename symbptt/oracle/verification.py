"""The verifying stage: the checks a derivation document reports, run here and handed over.

A document states what was verified, at which sizes.  The documents print
those results but never run a proof themselves (imports flow one way: this
module imports the oracles and the documents, not the reverse).

* the scalar proof (:func:`symbptt.oracle.verify.direction_proof`): ``sympy.diff`` of the
  explicit unrolled loss along one random direction of all the parameters, against
  the derivation's gradients weighted by that direction, at small concrete sizes —
  at the document's own T (up to :data:`OWN_STEPS`, a one-state cell), on the
  document's own derivation, its symbolic sizes set to the proof's;
* the numerical check (:func:`symbptt.oracle.gradcheck.gradcheck`): the generated
  module against central differences, at the spec's sizes (small defaults for
  sizes it leaves symbolic);
* for the "hello" presets, a worked example (:func:`worked_example`): one
  forward and backward pass with numbers, by the numeric evaluator, its
  gradients compared with the generated module's for the same numbers.

:func:`render_latex`, :func:`render_markdown` and :func:`build_pdf` are the
public ones (``symbptt.render_latex``): they run the checks (``verify=True``)
and render.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy as sp

from .. import documents
from ..core.derive import Derivation
from ..expr.exprlang import ExpressionError
from ..model import equations
from ..model.spec import ModelSpec
from . import gradcheck
from . import verify as scalar_oracle

__all__ = [
    "Checks",
    "SeedVerdict",
    "WorkedExample",
    "build_pdf",
    "formula_checks",
    "proof_spec",
    "render_latex",
    "render_markdown",
    "run_checks",
    "seed_checks",
    "worked_example",
]


@dataclass(frozen=True)
class WorkedExample:
    """One forward and backward pass with numbers: the "hello" example of the seeds.

    ``values`` maps the derivation's symbols (parameters, inputs, targets, every
    forward and backward quantity) to their values, from the project's numeric
    evaluator; ``module_error`` is the largest relative difference between its
    gradients and those the generated module computes for the same numbers.
    """

    text: str  # the characters read (inputs text[:-1], targets text[1:])
    sizes: dict[Any, int]  # the symbolic sizes the example fixes (n_1 = 3)
    values: dict[Any, Any]
    gradients: dict[str, Any]
    loss: float
    module_error: float
    grid: float = 0.1  # the parameters are multiples of it
    #: ‖∂L_T/∂h_k‖ for k = 0 .. T-1 over a longer sequence of the same characters, with
    #: the example's weights and with the recurrent weight scaled: scale -> norms
    norms: dict[float, tuple[float, ...]] | None = None
    recurrent: str = ""  # the recurrent weight's name (the one scaled)


@dataclass(frozen=True)
class SeedVerdict:
    """A seed's own formula (:mod:`symbptt.checker.seed_formulas`) and the checker's verdict."""

    id: str
    wrt: str
    formula: str  # as transcribed, in the checker's expression language
    verdict: str  # "EQUAL", "NOT EQUAL" or "REFUSED" (the formula cannot be read as one)
    correct: str = ""  # the correct gradient in the same language, and its definitions
    where: tuple[str, ...] = ()
    mistakes: tuple[str, ...] = ()  # the named mistakes it matches
    reason: str = ""  # why it was refused, or why its shape cannot match
    #: the spec fields the check ran with that differ from the document's (the seed's
    #: setting: 000 one example, 002 no 1/m), e.g. (("batch", 1),); () for the same spec
    setting: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Checks:
    """What was verified: each check's result (or why it could not run) and its sizes."""

    proof_spec: ModelSpec  # the small concrete spec the scalar proof ran at
    proof: scalar_oracle.ScalarProof | None
    proof_error: str | None
    numerical: gradcheck.GradcheckResult | None
    numerical_error: str | None
    numerical_sizes: tuple[tuple[str, int], ...]  # (n_in, n_hidden, n_out, batch, steps)
    example: WorkedExample | None = None  # the "hello" presets: numbers, checked
    seeds: tuple[SeedVerdict, ...] = ()  # the seed's own formulas for this spec, checked
    proof_own: bool = False  # the proof checked the document's own derivation (same T)
    user: tuple[SeedVerdict, ...] = ()  # the user's formulas (symbptt derive --check FILE)
    user_file: str = ""  # that file's name


#: The word of the seeds' example and the hidden size a worked example uses when the
#: spec leaves it open; parameters are drawn on a grid of 0.1 so they print exactly.
WORD, EXAMPLE_HIDDEN, EXAMPLE_SEED, EXAMPLE_GRID = "hello", 3, 20261130, 0.1


def worked_example(
    derivation: Derivation, module: ModuleType | None = None
) -> WorkedExample | None:
    """The "hello" example with numbers, for a one-state cell whose inputs and outputs are
    the four characters (one example, many-to-many, T < 5); None for any other spec.

    ``module``: the generated NumPy module of ``derivation``'s spec when the caller has it
    (``symbptt derive``: the very ``gradients.py`` it writes; it takes any size the spec
    leaves symbolic); else one is printed for the example's sizes."""
    from ..codegen.emit import emit_numpy, load_module
    from ..core.evaluate import Evaluator
    from ..model.presets import HELLO

    spec, graph = derivation.spec, derivation.graph
    n = len(HELLO)
    fits = spec.n_in == n and spec.n_out == n and spec.batch == 1
    if not fits or spec.mode != "many_to_many" or spec.steps >= len(WORD):
        return None
    if len(spec.model.states) != 1 or spec.initial_inputs:  # the example starts from h = 0
        return None
    text = WORD[: spec.steps + 1]
    symbols = graph.symbols
    sizes = {size: EXAMPLE_HIDDEN for size in symbols.sizes.values() if isinstance(size, sp.Symbol)}
    env: dict[Any, Any] = dict(sizes)
    rng = np.random.default_rng(EXAMPLE_SEED)

    def shape_of(symbol: Any) -> tuple[int, int]:
        return tuple(int(sp.sympify(d).xreplace(sizes)) for d in symbol.shape)  # type: ignore[return-value]

    params: dict[str, Any] = {}
    for name, symbol in graph.params.items():
        params[name] = (
            np.round(rng.uniform(-0.5, 0.5, shape_of(symbol)) / EXAMPLE_GRID) * EXAMPLE_GRID
        )
        env[symbol] = params[name]
    column = graph.symbols.layout == "column"
    eye = np.eye(n)
    X, Y = [], []
    for i, step in enumerate(graph.steps):
        x = eye[HELLO.index(text[i])][:, None]
        y = eye[HELLO.index(text[i + 1])][:, None]
        env[symbols.series("input", step)] = x if column else x.T
        env[symbols.series("target", step)] = y if column else y.T
        X.append(x.T)
        Y.append(y.T)
    evaluator = Evaluator(env)
    evaluator.run(graph.assignments)
    evaluator.run(derivation.assignments)
    gradients = {name: evaluator(g) for name, g in derivation.gradients.items()}
    # the same numbers through the generated module
    if module is None:
        module = load_module(emit_numpy(replace(spec, n_hidden=spec.n_hidden or EXAMPLE_HIDDEN)))
    value, computed = module.loss_and_gradients(params, np.array(X), np.array(Y))
    error = max(
        float(np.max(np.abs(computed[name] - gradients[name])) / max(1.0, np.max(np.abs(g))))
        for name, g in gradients.items()
        if name in computed
    )
    total = graph.assignments[-1].target
    loss = float(np.asarray(evaluator.env[total]).reshape(-1)[0])
    error = max(error, abs(loss - value) / max(1.0, abs(value)))
    values = {a.target: evaluator.env[a.target] for a in graph.assignments + derivation.assignments}
    values.update({graph.params[name]: value for name, value in params.items()})
    cell = spec.model  # the weight that multiplies the previous state, by the equations
    weights = {
        cell.role_of(k) for k, v in equations.weight_operands(cell).items() if v == "recurrent"
    }
    recurrent = next((n for n, role in derivation.roles.items() if role in weights), "")
    norms = _norms(module, params, recurrent, rng) if recurrent else None
    return WorkedExample(
        text, dict(sizes), values, gradients, loss, error, EXAMPLE_GRID, norms, recurrent
    )


#: The longer sequence the gradient norms are measured over, and the recurrent weight's scales.
NORM_STEPS, NORM_SCALES = 30, (1.0, 4.0)


def _norms(
    module: Any, params: dict[str, Any], recurrent: str, rng: np.random.Generator
) -> dict[float, tuple[float, ...]]:
    """``train.gradient_norms`` over NORM_STEPS random characters, for each scale of the
    recurrent weight: how far back the last step's loss reaches."""
    from ..model.presets import HELLO
    from ..train import gradient_norms

    eye = np.eye(len(HELLO))
    chars = rng.integers(0, len(HELLO), size=NORM_STEPS + 1)
    X, Y = eye[chars[:-1]][:, None, :], eye[chars[1:]][:, None, :]
    out = {}
    for scale in NORM_SCALES:
        scaled = {**params, recurrent: params[recurrent] * scale}
        out[scale] = tuple(float(v) for v in gradient_norms(module, scaled, X, Y))
    return out


#: The scalar proof runs at the document's own T up to this many steps (an Elman cell);
#: beyond, at PROOF_STEPS (a gated cell: GATED_STEPS).  The explicit unrolled loss grows
#: about exponentially with T (CPU seconds here of the direction proof after sympy.cse,
#: n_1 = 2, m = 2, n_0 = n_2 = 3: xh "hello" T = 4 0.4; GRU T = 2 0.6, T = 3 3.0; LSTM
#: T = 2 1.2, T = 3 3.7; an LSTM at T = 4 did not finish in 4 minutes).
OWN_STEPS, PROOF_STEPS, GATED_STEPS = 4, 3, 2
#: The largest input and output sizes the proof takes from a document (n_0, n_2).
PROOF_WIDTH = 4


def proof_spec(spec: ModelSpec) -> ModelSpec:
    """The spec at the small concrete sizes the scalar proof runs at.

    A one-state cell (Elman) keeps the document's T up to :data:`OWN_STEPS` and
    its input and output sizes up to :data:`PROOF_WIDTH`; a size the document
    leaves symbolic is 2, the hidden size at most 2, the batch at most 2.  A
    gated cell runs at T ≤ 2 with n_0, n_2 ≤ 3 (its explicit loss is far larger).

    A composed model's explicit unrolled loss grows with every unit: its proof runs
    at two steps, one input unit, and one hidden unit for a cell with more equations
    than Elman's two (two layers, bidirectional, masked: Elman at three steps took 35 s
    here, an LSTM at two steps with two hidden units over 5 minutes).
    """
    if spec.composed:
        hidden = 2 if len(spec.model.equations) <= 2 else 1
        return replace(
            spec,
            steps=min(spec.steps, 2),
            n_in=1,
            n_hidden=min(spec.n_hidden or hidden, hidden),
            n_out=min(spec.n_out or 2, 2),
            batch=min(spec.batch or 2, 2),
        )
    one_state = len(spec.model.equations) <= 2
    if one_state:
        steps = spec.steps if spec.steps <= OWN_STEPS else min(spec.steps, PROOF_STEPS)
    else:
        steps = min(spec.steps, GATED_STEPS)
    width = PROOF_WIDTH if one_state else 3
    return replace(
        spec,
        steps=steps,
        n_in=min(spec.n_in or 2, width),
        n_hidden=min(spec.n_hidden or 2, 2),
        n_out=min(spec.n_out or 2, width),
        batch=min(spec.batch or 2, 2),
    )


#: The sizes a spec may leave symbolic.
_SIZES = ("n_in", "n_hidden", "n_out", "batch")


def _seed(spec: ModelSpec) -> int:
    return int(spec.hash()[:8], 16)


def _numerical_sizes(spec: ModelSpec) -> tuple[tuple[str, int], ...]:
    """The sizes :func:`gradcheck.gradcheck` runs at: the spec's, else its defaults."""
    problem = inspect.signature(gradcheck.random_problem).parameters
    check = inspect.signature(gradcheck.gradcheck).parameters
    return (
        ("n_in", spec.n_in or problem["n_in"].default),
        ("n_hidden", spec.n_hidden or problem["n_hidden"].default),
        ("n_out", spec.n_out or problem["n_out"].default),
        ("batch", spec.batch or check["batch"].default),
        ("steps", spec.steps),
    )


def _verdict(spec: ModelSpec, id: str, wrt: str, formula: str) -> SeedVerdict:
    """``formula`` for ``wrt`` run through :func:`symbptt.check` at ``spec``
    (an :class:`ExpressionError` propagates)."""
    from ..checker import check

    result = check(spec, wrt, formula)
    shape = next((note for note in result.notes if "shape" in note), "")
    return SeedVerdict(
        id,
        wrt,
        formula,
        "EQUAL" if result.ok else "NOT EQUAL",
        correct=str(result.formula.gradient),
        where=tuple(result.formula.where),
        mistakes=tuple(m.description for m in result.mistakes),
        reason=shape if result.shape_mismatch else "",
    )


def seed_checks(spec: ModelSpec) -> tuple[SeedVerdict, ...]:
    """The seed formulas a document of ``spec`` shows
    (:func:`symbptt.checker.seed_formulas.for_spec`), each run through
    :func:`symbptt.check` at the formula's own spec; a refused one gets the correct
    formula too."""
    from ..checker.formulas import correct_formula
    from ..checker.seed_formulas import for_spec

    out = []
    for entry in for_spec(spec):
        setting = entry.fields if entry.spec != spec else ()
        try:
            found = _verdict(entry.spec, entry.id, entry.wrt, entry.formula)
        except ExpressionError as exc:  # shapes that cannot fit, a step outside the model
            right = correct_formula(entry.spec, entry.wrt)
            found = SeedVerdict(
                entry.id,
                entry.wrt,
                entry.formula,
                "REFUSED",
                correct=str(right.gradient),
                where=tuple(right.where),
                reason=str(exc).splitlines()[0],
            )
        out.append(replace(found, setting=setting))
    return tuple(out)


def formula_checks(spec: ModelSpec, formulas: Sequence[tuple[str, str]]) -> tuple[SeedVerdict, ...]:
    """The user's formulas ((parameter, formula) pairs, ``symbptt derive --check FILE``),
    each run through :func:`symbptt.check`.  A formula the checker cannot read raises
    :class:`ExpressionError` (the command says which, and writes nothing)."""
    return tuple(_verdict(spec, f"user-{wrt}", wrt, formula) for wrt, formula in formulas)


def run_checks(
    source: ModelSpec | Derivation,
    module: ModuleType | None = None,
    *,
    user: tuple[SeedVerdict, ...] = (),
    user_file: str = "",
) -> Checks:
    """Run both checks for ``source``; a check that fails to run is reported, not hidden.

    ``module``: the generated NumPy module of ``source`` when the caller has it already
    (``symbptt derive`` does), so that it is not derived and printed a second time.
    ``user``: the verdicts of :func:`formula_checks` on the file ``user_file``
    (``symbptt derive --check``, which runs them first), handed to the documents.
    """
    derivation = documents.as_derivation(source)  # derived once, here, when a spec is given
    spec = derivation.spec
    small = proof_spec(spec)
    proof = numerical = None
    proof_error = numerical_error = None
    # the document's own derivation when the proof runs at its T (its sizes, symbolic
    # or not, are set to the proof's): what is proven is what is printed
    same = all(getattr(spec, k) in (None, getattr(small, k)) for k in _SIZES)
    own = derivation if same and small.steps == spec.steps else None
    try:
        proof = scalar_oracle.direction_proof(small, np.random.default_rng(_seed(spec)), own)
    except Exception as exc:  # reported in the document
        proof_error = f"{type(exc).__name__}: {exc}"
    try:
        checked = derivation if module is None else module
        rng = np.random.default_rng(_seed(spec))
        numerical = gradcheck.gradcheck(checked, rng)
    except Exception as exc:  # reported in the document
        numerical_error = f"{type(exc).__name__}: {exc}"
    example = None if spec.composed else worked_example(derivation, module)
    seeds = () if spec.composed else seed_checks(spec)
    return Checks(
        small,
        proof,
        proof_error,
        numerical,
        numerical_error,
        _numerical_sizes(spec),
        example,
        seeds,
        proof_own=own is not None,
        user=user,
        user_file=user_file,
    )


def render_latex(
    spec: ModelSpec | Derivation, *, name: str | None = None, verify: bool = True
) -> str:
    """The derivation of ``spec`` as a LaTeX document; with ``verify``, both checks run
    first and fill its last section (without, it says they were not run)."""
    d = documents.as_derivation(spec)
    return documents.render_latex(d, name=name, checks=run_checks(d) if verify else None)


def render_markdown(
    spec: ModelSpec | Derivation, *, name: str | None = None, verify: bool = True
) -> str:
    """The derivation of ``spec`` as GitHub Markdown (checks as :func:`render_latex`)."""
    d = documents.as_derivation(spec)
    return documents.render_markdown(d, name=name, checks=run_checks(d) if verify else None)


def build_pdf(
    spec: ModelSpec | Derivation,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    verify: bool = True,
) -> Path:
    """Write the derivation of ``spec`` as a PDF to ``path`` (needs pdflatex)."""
    d = documents.as_derivation(spec)
    documents.tex_engine()  # fail before the checks when there is no TeX
    return documents.build_pdf(d, path, name=name, checks=run_checks(d) if verify else None)
