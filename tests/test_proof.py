"""Proof: every gradient entry equals scalar sympy.diff of the explicit unrolled loss.

The derivation's expanded gradients (``Derivation.gradient(name, expand=True)``)
are compared entry by entry with ``sympy.diff`` of the fully scalar unrolled
loss (:mod:`symbptt.oracle.verify`), at 30 significant digits at a random point, and
exactly (symbolically) for a polynomial model.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt.core.evaluate import Evaluator
from symbptt.model.spec import OUTPUT_LOSS_PAIRS
from symbptt.oracle import verify

HIDDEN = ("tanh", "relu", "sigmoid", "identity")
PAIRS = OUTPUT_LOSS_PAIRS
MODES = ("many_to_many", "many_to_one")
TIME = ("sum", "mean")
COLUMN_NOTATIONS = ("xh", "uvw", "aa")


def _cases() -> list[symbptt.ModelSpec]:
    """Every hidden × (output, loss) × mode × time reduction × layout; T cycles 1, 2, 3.

    The other fields cycle too, so every notation, both batch reductions,
    bias on and off and both initial states are covered.
    """
    specs = []
    combos = itertools.product(HIDDEN, PAIRS, MODES, TIME, ("column", "row"))
    for index, (hidden, (output, loss), mode, time, layout) in enumerate(combos):
        notation = "layered" if layout == "row" else COLUMN_NOTATIONS[index % 3]
        specs.append(
            symbptt.ModelSpec(
                steps=1 + index % 3,
                hidden=hidden,
                output=output,
                loss=loss,
                mode=mode,
                time_reduction=time,
                batch_reduction=("mean", "sum")[index % 2],
                notation=notation,
                bias=index % 5 != 4,
                initial_state=("zero", "input")[(index // 2) % 2],
                n_in=2,
                n_hidden=2,
                n_out=2,
                batch=2,
            )
        )
    return specs


CASES = _cases()


def _id(spec: symbptt.ModelSpec) -> str:
    return (
        f"{spec.hidden}-{spec.output}-{spec.loss}-{spec.mode}-{spec.time_reduction}"
        f"-{spec.notation}-T{spec.steps}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("spec", CASES, ids=_id)
def test_every_entry_equals_scalar_diff(spec: symbptt.ModelSpec) -> None:
    rng = np.random.default_rng(int(spec.hash(), 16))  # the same point on every run
    proof = verify.scalar_proof(spec, rng)
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


def test_the_spread_covers_every_combination() -> None:
    assert len(CASES) == len(HIDDEN) * len(PAIRS) * 2 * 2 * 2
    assert {c.steps for c in CASES} == {1, 2, 3}
    assert {c.notation for c in CASES} == {"xh", "uvw", "layered", "aa"}
    seen = {
        (c.hidden, c.output, c.loss, c.mode, c.time_reduction, c.notation == "layered")
        for c in CASES
    }
    assert len(seen) == len(CASES)


def _gated_cases() -> list[symbptt.ModelSpec]:
    """Every gated cell × (output, loss) × mode × time reduction × layout; T cycles 1, 2.

    Sizes (n_in, n_hidden, n_out, m) = (1, 2, 2, 1) keep sympy.diff of an LSTM
    under a minute; T = 3 is proven below for each cell and layout.
    """
    specs = []
    combos = itertools.product(("lstm", "gru"), PAIRS, MODES, TIME, ("xh", "layered"))
    for index, (cell, (output, loss), mode, time, notation) in enumerate(combos):
        specs.append(
            symbptt.ModelSpec(
                cell=cell,
                steps=1 + index % 2,
                output=output,
                loss=loss,
                mode=mode,
                time_reduction=time,
                batch_reduction=("mean", "sum")[index % 2],
                notation=notation,
                bias=index % 5 != 4,
                initial_state=("zero", "input")[(index // 2) % 2],
                n_in=1,
                n_hidden=2,
                n_out=2,
                batch=1,
            )
        )
    return specs


GATED = _gated_cases()


def _gated_id(spec: symbptt.ModelSpec) -> str:
    return f"{spec.cell}-{_id(spec)}"


@pytest.mark.slow
@pytest.mark.parametrize("spec", GATED, ids=_gated_id)
def test_every_gated_entry_equals_scalar_diff(spec: symbptt.ModelSpec) -> None:
    rng = np.random.default_rng(int(spec.hash(), 16))
    proof = verify.scalar_proof(spec, rng)
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


def test_the_gated_spread_covers_every_combination() -> None:
    assert len(GATED) == 2 * len(PAIRS) * 2 * 2 * 2
    seen = {(c.cell, c.output, c.loss, c.mode, c.time_reduction, c.notation) for c in GATED}
    assert len(seen) == len(GATED)
    assert {(c.cell, c.steps) for c in GATED} == {(a, b) for a in ("lstm", "gru") for b in (1, 2)}
    assert {c.initial_state for c in GATED} == {"zero", "input"}
    assert {c.bias for c in GATED} == {True, False}


#: T = 3 for each gated cell and layout, each with another head, mode and reduction
#: (every combination at T = 3 would take hours: sympy.diff of an LSTM's explicit loss
#: at T = 3 takes seconds per entry, most of it SymPy's canonicalising walk).
GATED_AT_THREE = [
    ("lstm", "xh", "softmax", "cross_entropy", "many_to_many", "sum"),
    ("lstm", "layered", "sigmoid", "binary_cross_entropy", "many_to_one", "mean"),
    ("gru", "xh", "relu", "squared_error", "many_to_many", "mean"),
    ("gru", "layered", "identity", "squared_error", "many_to_one", "sum"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cell", "notation", "output", "loss", "mode", "time"), GATED_AT_THREE, ids=str
)
def test_gated_cells_at_three_steps(
    cell: str, notation: str, output: str, loss: str, mode: str, time: str, rng: np.random.Generator
) -> None:
    spec = symbptt.ModelSpec(
        cell=cell,
        steps=3,
        notation=notation,
        output=output,
        loss=loss,
        mode=mode,
        time_reduction=time,
        n_in=1,
        n_hidden=2,
        n_out=2,
        batch=1,
        initial_state="input",
    )
    proof = verify.scalar_proof(spec, rng)
    assert proof.entries == sum(int(p.shape[0] * p.shape[1]) for p in spec_params(spec))
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


def test_the_gated_three_step_cases_cover_each_cell_layout_and_head() -> None:
    assert {(c[0], c[1]) for c in GATED_AT_THREE} == {
        (a, b) for a in ("lstm", "gru") for b in ("xh", "layered")
    }
    assert {c[4] for c in GATED_AT_THREE} == set(MODES)
    assert {c[5] for c in GATED_AT_THREE} == set(TIME)
    assert {(c[2], c[3]) for c in GATED_AT_THREE} <= set(PAIRS)


def spec_params(spec: symbptt.ModelSpec) -> list[sp.MatrixSymbol]:
    graph = symbptt.derive(spec).graph
    return [*graph.params.values(), *graph.initials.values()]


@pytest.mark.slow
@pytest.mark.parametrize("notation", ["xh", "uvw", "layered", "aa"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_reference_sizes(notation: str, steps: int, rng: np.random.Generator) -> None:
    spec = symbptt.ModelSpec(
        steps=steps,
        notation=notation,
        n_in=2,
        n_hidden=3,
        n_out=2,
        batch=2,
        initial_state="input",
    )
    proof = verify.scalar_proof(spec, rng)
    assert proof.entries == 6 + 9 + 6 + 3 + 2 + 6
    assert proof.ok, f"max relative error {proof.max_relative_error:.3e}"


@pytest.mark.parametrize("notation", ["xh", "layered"])
def test_exact_equality_for_a_polynomial_model(notation: str) -> None:
    """Linear RNN + squared error: SymPy shows the equality exactly, every entry."""
    spec = symbptt.ModelSpec(
        steps=2,
        hidden="identity",
        output="identity",
        loss="squared_error",
        batch_reduction="sum",
        notation=notation,
        n_in=1,
        n_hidden=2,
        n_out=1,
        batch=1,
        initial_state="input",
    )
    d = symbptt.derive(spec)
    graph = d.graph
    explicit: dict[str, object] = {}
    env: dict[object, object] = {}
    for name, symbol in graph.params.items():
        matrix = sp.Matrix(*symbol.shape, lambda i, j, n=name: sp.Symbol(f"{n}[{i},{j}]"))
        explicit[name] = matrix
        env[symbol] = np.array(matrix.tolist(), dtype=object)
    for key, symbols in (("x", graph.inputs), ("y", graph.targets)):
        matrices = [
            sp.Matrix(*s.shape, lambda i, j, n=str(s): sp.Symbol(f"{n}[{i},{j}]")) for s in symbols
        ]
        explicit[key] = matrices
        env.update(
            {s: np.array(m.tolist(), dtype=object) for s, m in zip(symbols, matrices, strict=True)}
        )
    for initial in graph.initials.values():
        h0 = sp.Matrix(*initial.shape, lambda i, j, n=initial.name: sp.Symbol(f"{n}[{i},{j}]"))
        explicit[initial.name] = h0
        env[initial] = np.array(h0.tolist(), dtype=object)
    loss = verify.scalar_loss(spec, explicit)  # type: ignore[arg-type]
    for name in d.gradients:
        derived = Evaluator(env, backend="mp")(d.gradient(name))
        matrix = explicit[name]
        for i in range(matrix.rows):  # type: ignore[attr-defined]
            for j in range(matrix.cols):  # type: ignore[attr-defined]
                exact = sp.diff(loss, matrix[i, j])  # type: ignore[index]
                assert sp.expand(exact - sp.nsimplify(derived[i, j])) == 0, (name, i, j)


# -- one random direction: what the documents' verifying stage runs -----------------------
@pytest.mark.parametrize(
    "spec",
    [
        symbptt.ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=2, batch=2),
        symbptt.ModelSpec(
            steps=3,
            notation="layered",
            mode="many_to_one",
            hidden="relu",
            n_in=2,
            n_hidden=2,
            n_out=2,
            batch=2,
            initial_state="input",
        ),
        symbptt.ModelSpec(
            steps=2,
            notation="uvw",
            hidden="sigmoid",
            output="sigmoid",
            loss="binary_cross_entropy",
            time_reduction="mean",
            n_in=2,
            n_hidden=2,
            n_out=2,
            batch=2,
            bias=False,
        ),
    ],
    ids=["xh", "layered-relu-m2o-h0", "uvw-sigmoid-bce-mean"],
)
def test_direction_proof_agrees_with_sympy_diff(
    spec: symbptt.ModelSpec, rng: np.random.Generator
) -> None:
    proof = verify.direction_proof(spec, rng)
    assert proof.ok and proof.direction, proof
    gradients = symbptt.derive(spec).gradients.values()
    assert proof.entries == sum(int(g.shape[0]) * int(g.shape[1]) for g in gradients)


def test_direction_proof_checks_the_derivation_it_is_given(rng: np.random.Generator) -> None:
    """The document's own derivation, sizes symbolic, evaluated at the proof's sizes."""
    doc = symbptt.ModelSpec(steps=2, notation="aa", n_out=3)
    small = symbptt.ModelSpec(steps=2, notation="aa", n_in=2, n_hidden=2, n_out=3, batch=1)
    assert verify.direction_proof(small, rng, symbptt.derive(doc)).ok


@pytest.mark.parametrize("name", ["W_xh", "W_hh", "W_hy", "b_h", "b_y"])
def test_direction_proof_fails_when_one_gradient_is_off_by_a_millionth(
    name: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One parameter's gradient scaled by 1 + 10⁻⁶, every other one right: the one
    derivative along a random direction of all the parameters sees it."""
    from symbptt.core.derive import Derivation

    spec = symbptt.ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=2, batch=1)
    right = Derivation.gradient

    def off(self: Derivation, which: str, expand: bool = True) -> sp.MatrixExpr:
        g = right(self, which, expand=expand)
        return sp.MatMul(1 + sp.Rational(1, 10**6), g) if which == name else g

    monkeypatch.setattr(Derivation, "gradient", off)
    proof = verify.direction_proof(spec, rng)
    assert not proof.ok and proof.max_relative_error > 1e-9, proof


@pytest.mark.parametrize("other", [{"steps": 3}, {"mode": "many_to_one"}, {"hidden": "relu"}])
def test_direction_proof_refuses_another_models_derivation(
    other: dict[str, object], rng: np.random.Generator
) -> None:
    from dataclasses import replace

    spec = symbptt.ModelSpec(steps=2, n_in=2, n_hidden=2, n_out=2, batch=1)
    with pytest.raises(ValueError, match="another model"):
        verify.direction_proof(spec, rng, symbptt.derive(replace(spec, **other)))


def test_value_at_equals_evalf() -> None:
    """The memoised numeric walk the direction proof reads sympy.diff's result with."""
    import mpmath

    s = sp.Symbol("s", real=True)
    inner = sp.tanh(sp.Float("0.3", 30) + 2 * s)
    expr = sp.log(1 + sp.exp(inner * inner - s)) / (1 + inner) + sp.Heaviside(s, 0) + sp.pi
    value = sp.Float("0.7", 30)
    with mpmath.workdps(30):
        got = verify._value_at(expr, {s: mpmath.mpf("0.7")})
        assert abs(got - mpmath.mpf(str(expr.xreplace({s: value}).evalf(30)))) < 1e-28
    with pytest.raises(TypeError, match="unevaluated"):
        verify._value_at(sp.Derivative(sp.Function("f")(s), s), {s: mpmath.mpf(0)})


@pytest.mark.parametrize(
    "spec",
    [
        symbptt.ModelSpec(steps=3, n_in=2, n_hidden=2, n_out=3, batch=1),
        symbptt.ModelSpec(
            steps=2,
            notation="layered",
            hidden="relu",
            mode="many_to_one",
            n_in=2,
            n_hidden=2,
            n_out=2,
            batch=2,
            initial_state="input",
        ),
        symbptt.ModelSpec(
            steps=2,
            notation="uvw",
            hidden="sigmoid",
            output="sigmoid",
            loss="binary_cross_entropy",
            time_reduction="mean",
            n_in=2,
            n_hidden=2,
            n_out=2,
            batch=2,
        ),
        symbptt.ModelSpec(steps=2, cell="lstm", n_in=1, n_hidden=1, n_out=2, batch=1),
    ],
    ids=["xh-softmax", "layered-relu-m2o-h0", "uvw-sigmoid-bce", "lstm"],
)
def test_directional_derivative_equals_one_sympy_diff_of_the_whole_loss(
    spec: symbptt.ModelSpec, rng: np.random.Generator
) -> None:
    """The proof's derivative (sympy.cse, then sympy.diff of each piece and the chain
    rule) against one sympy.diff in s of the whole explicit loss at θ + s E."""
    import mpmath

    values = verify.random_values(spec, rng)
    s = sp.Symbol("s", real=True)
    moved, entries, point, direction = {}, {}, {}, {}
    with mpmath.workdps(verify.DPS):
        for name in symbptt.derive(spec).gradients:
            rows, cols = values[name].shape
            data = [sp.Float(repr(float(v)), verify.DPS) for v in rng.normal(size=rows * cols)]
            e = sp.Matrix(rows, cols, data)
            moved[name] = values[name] + s * e
            entries[name] = sp.Matrix(rows, cols, [sp.Dummy(real=True) for _ in data])
            for entry, at, slope in zip(entries[name], values[name], e, strict=True):
                point[entry], direction[entry] = mpmath.mpf(str(at)), mpmath.mpf(str(slope))
        whole = verify._value_at(
            sp.diff(verify.scalar_loss(spec, {**values, **moved}), s), {s: mpmath.mpf(0)}
        )
        pieces = verify.directional_derivative(
            verify.scalar_loss(spec, {**values, **entries}), point, direction
        )
        assert abs(pieces - whole) <= mpmath.mpf(10) ** -25 * max(1, abs(whole))
