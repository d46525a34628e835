"""The scalar oracle: the fully explicit, unrolled loss, built entry by entry.

This is written independently of the derivation: it composes the spec's
definitions (activation, output, loss: the single source of truth) on
explicit SymPy matrices whose entries are numbers or symbols, and lets
``sympy.diff`` differentiate the result.  :func:`scalar_proof` compares every
entry of every derived gradient with it, at 30 significant digits.

Scalar differentiation grows about exponentially with T: use small sizes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any

import mpmath
import numpy as np
import sympy as sp

from ..core.derive import Derivation, derive
from ..core.evaluate import Evaluator
from ..core.graph import Symbols
from ..expr import functions
from ..model.spec import ModelSpec

__all__ = [
    "DPS",
    "ScalarProof",
    "direction_proof",
    "directional_derivative",
    "random_mask",
    "random_values",
    "scalar_loss",
    "scalar_proof",
]

DPS = 30


def _apply(definition: sp.Expr, matrix: sp.Matrix) -> sp.Matrix:
    return matrix.applyfunc(lambda v: definition.xreplace({functions.z: v}))


def _softmax(matrix: sp.Matrix, axis: int) -> sp.Matrix:
    out = sp.zeros(*matrix.shape)
    output = functions.SoftmaxOutput()
    if axis == 0:
        for j in range(matrix.shape[1]):
            column = output.definition_of(list(matrix[:, j]))
            for i, v in enumerate(column):
                out[i, j] = v
    else:
        for i in range(matrix.shape[0]):
            row = output.definition_of(list(matrix[i, :]))
            for j, v in enumerate(row):
                out[i, j] = v
    return out


def _sizes(spec: ModelSpec) -> tuple[int, int, int, int]:
    """(n_in, n_hidden, n_out, batch); the scalar oracle needs them concrete."""
    sizes = (spec.n_in, spec.n_hidden, spec.n_out, spec.batch)
    if any(size is None for size in sizes):
        raise ValueError(
            "the scalar oracle needs concrete sizes: set n_in, n_hidden, n_out and batch "
            f"(got {sizes})"
        )
    return sizes  # type: ignore[return-value]


class _Explicit:
    """Evaluates a cell equation's syntax tree on explicit SymPy matrices, column layout.

    Written apart from the derivation's builder (:mod:`symbptt.model.equations`)
    and its rules: names are looked up in plain dicts, ``@`` is ``Matrix.__mul__``,
    ``*`` is elementwise, functions apply their scalar definitions entry by entry.
    """

    def __init__(self, spec: ModelSpec, params: dict[str, sp.Matrix], m: int) -> None:
        self.spec = spec
        self.cell = spec.model
        self.params = params
        self.m = m
        self.values: dict[tuple[str, int], sp.Matrix] = {}

    def function(self, name: str) -> sp.Expr:
        if name == self.cell.activation:
            return functions.ACTIVATIONS[self.spec.hidden].definition
        return functions.ACTIVATIONS[name].definition

    def __call__(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return sp.nsimplify(node.value)
        if isinstance(node, ast.Name):
            value = self.params.get(node.id)
            if value is None:  # a bias the spec leaves out
                rows = self.spec.model.parameter(node.id).shape[0]
                size = self.spec.n_in if rows == "n_in" else self.spec.n_hidden
                return sp.zeros(size, self.m)
            if self.cell.parameter(node.id).per_unit:
                return value * sp.ones(1, self.m)
            return value
        if isinstance(node, ast.Subscript):
            assert isinstance(node.value, ast.Name)
            index = node.slice
            offset = 0
            if isinstance(index, ast.BinOp):
                assert isinstance(index.right, ast.Constant)
                step = index.right.value
                assert isinstance(step, int)
                offset = -step if isinstance(index.op, ast.Sub) else step
            return self.values[(node.value.id, offset)]
        if isinstance(node, ast.UnaryOp):
            value = self(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Attribute):
            return self(node.value).T
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return _apply(self.function(node.func.id), self(node.args[0]))
        if isinstance(node, ast.BinOp):
            a, b = self(node.left), self(node.right)
            am, bm = isinstance(a, sp.MatrixBase), isinstance(b, sp.MatrixBase)
            if isinstance(node.op, (ast.Add, ast.Sub)):
                if not am:
                    a = a * sp.ones(*b.shape)
                if not bm:
                    b = b * sp.ones(*a.shape)
                return a + b if isinstance(node.op, ast.Add) else a - b
            if isinstance(node.op, ast.Mult):
                return a.multiply_elementwise(b) if am and bm else a * b
            if isinstance(node.op, ast.MatMult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
            if isinstance(node.op, ast.Pow):
                return a.applyfunc(lambda v: v**b) if am else a**b
        raise TypeError(f"the scalar oracle cannot evaluate {ast.dump(node)}")


def scalar_loss(spec: ModelSpec, values: dict[str, Any]) -> sp.Expr:
    """The loss of ``spec`` with explicit matrices ``values``.

    ``values`` holds every parameter and initial state by its ASCII name (in
    the notation's layout), the lists ``"x"`` and ``"y"``, and for a masked
    model ``"mask"`` (T rows of m zeros and ones).  The loss is built in the
    column layout from the cell file's equations (a row-layout notation's
    matrices are transposed first): it is the same number.

    A composed model (``docs/composition.md``) is written out directly: each
    unit runs the cell's equations over its steps (a backward unit from the
    last step to the first), a layer above the first reads the readout states
    of the layer below stacked into one column, [h_f; h_b], through the two
    halves of its input weight put side by side; a masked example keeps each
    state's value from the step before; the output layer reads the last
    layer; every example's losses are weighted and reduced as the spec says.
    """
    cell = spec.model
    notation = cell.notations[spec.notation]
    column = notation.layout == "column"
    program = spec.program

    def col(matrix: sp.Matrix, bias: bool = False) -> sp.Matrix:
        return matrix if column or bias else matrix.T

    def is_bias(key: str) -> bool:
        return key == "b_out" or (key != "W_out" and cell.parameter(key).per_unit)

    n0, n1, _, m = _sizes(spec)
    steps = spec.steps
    mask = values.get("mask") if spec.masked else None
    real = [[1 if mask is None else int(mask[k][j]) for j in range(m)] for k in range(steps)]
    readouts: list[list[sp.Matrix]] = []
    for unit in program.units:
        sources = [program.units[i] for i in unit.reads]
        params: dict[str, sp.Matrix] = {}
        for entry in notation.params:
            if entry.key in ("W_out", "b_out"):
                continue
            name = unit.name(entry.ascii)
            if len(sources) > 1 and cell.parameter(entry.key).shape[1] == "n_in":
                halves = [col(values[f"{name}_{s.direction_tag}"]) for s in sources]
                params[entry.key] = sp.Matrix.hstack(*halves)
            elif name in values:
                params[entry.key] = col(values[name], is_bias(entry.key))
        explicit = _Explicit(spec, params, m)
        width = n0 if not unit.reads else n1 * len(unit.reads)
        states: dict[str, sp.Matrix] = {}
        for state in cell.states:
            start = values.get(unit.name(notation.name_of(state.key).initial))
            size = width if state.size == "n_in" else n1
            states[state.key] = col(start) if start is not None else sp.zeros(size, m)
        order = range(steps) if unit.direction == "forward" else range(steps - 1, -1, -1)
        out: dict[int, sp.Matrix] = {}
        for k in order:
            explicit.values = {(key, -1): value for key, value in states.items()}
            if unit.reads:
                x = sp.Matrix.vstack(*(readouts[i][k] for i in unit.reads))
            else:
                x = col(values["x"][k])
            explicit.values[(cell.inputs[0].key, 0)] = x
            for eq in cell.equations:
                explicit.values[(eq.target, 0)] = explicit(eq.tree)
            for key, before in list(states.items()):
                new = explicit.values[(key, 0)].copy()
                for j in range(m):
                    if not real[k][j]:  # a padded step: the example keeps its state
                        new[:, j] = before[:, j]
                states[key] = new
            readout = states.get(cell.readout, explicit.values[(cell.readout, 0)])
            out[k] = readout
        readouts.append([out[k] for k in range(steps)])
    head = [program.units[i] for i in program.head]
    w_name = notation.name_of("W_out").ascii
    head_weights = [
        col(values[w_name if len(head) == 1 else f"{w_name}_{unit.direction_tag}"]) for unit in head
    ]
    b_out = col(values[notation.name_of("b_out").ascii], True) if spec.bias else None
    loss_def = functions.LOSSES[spec.loss].definition
    many = spec.mode == "many_to_many"
    loss_steps = list(range(steps)) if many else [steps - 1]
    per_example: list[list[sp.Expr]] = []  # [loss step][example]
    for n, k in enumerate(loss_steps):
        o = sp.zeros(head_weights[0].shape[0], m)
        for weight, index, unit in zip(head_weights, program.head, head, strict=True):
            at = k if many or unit.direction == "forward" else 0
            o += weight * readouts[index][at]
        if b_out is not None:
            o += b_out * sp.ones(1, m)
        if spec.output == "softmax":
            pred = _softmax(o, 0)
        else:
            pred = _apply(functions.OUTPUTS[spec.output].definition, o)
        target = col(values["y"][n])
        per_example.append(
            [
                sp.Add(
                    *(
                        loss_def.xreplace({functions.a: pred[i, j], functions.y: target[i, j]})
                        for i in range(pred.shape[0])
                    )
                )
                for j in range(m)
            ]
        )
    counts = [real[k] if many else [1] * m for k in loss_steps]  # which losses count
    total = sp.Integer(0)
    for j in range(m):
        mine = sp.Add(*(per_example[n][j] for n in range(len(loss_steps)) if counts[n][j]))
        if spec.time_reduction == "mean":
            mine = mine / sum(counts[n][j] for n in range(len(loss_steps)))
        total += mine
    if spec.batch_reduction == "mean":
        total = total / m
    elif spec.batch_reduction == "tokens":
        total = total / sum(sum(row) for row in counts)
    return total


def random_values(spec: ModelSpec, rng: np.random.Generator) -> dict[str, Any]:
    """Random 30-digit values for every matrix of the model, keyed by ASCII name."""
    symbols = Symbols(spec, spec.model.notations[spec.notation])
    column = symbols.layout == "column"
    _sizes(spec)

    def mat(shape: tuple[Any, Any], scale: float = 0.6) -> sp.Matrix:
        rows, cols = int(shape[0]), int(shape[1])
        data = rng.normal(scale=scale, size=(rows, cols))
        return sp.Matrix(rows, cols, [sp.Float(repr(float(v)), DPS) for v in data.ravel()])

    values: dict[str, Any] = {name: mat(p.shape) for name, p in symbols.params.items()}
    values["x"] = [mat(symbols.series_shape("input"), 1.0) for _ in range(spec.steps)]
    count = spec.steps if spec.mode == "many_to_many" else 1
    shape = symbols.series_shape("target")
    values["y"] = [_target(spec, (int(shape[0]), int(shape[1])), rng, column) for _ in range(count)]
    for initial in symbols.initials.values():
        if isinstance(initial, sp.MatrixSymbol):  # an input, not a zero start
            values[initial.name] = mat(initial.shape)
    if spec.masked:
        values["mask"] = random_mask(spec.steps, int(symbols.sizes["batch"]), rng)
    return values


def random_mask(steps: int, batch: int, rng: np.random.Generator) -> list[list[int]]:
    """A (T, m) 0/1 mask of random lengths, each example's real steps first.

    The first example is full length; with T > 1 the last one is shorter, so a
    masked step is always tried.
    """
    lengths = [int(n) for n in rng.integers(1, steps + 1, size=batch)]
    lengths[0] = steps
    if steps > 1 and batch > 1:
        lengths[-1] = min(lengths[-1], steps - 1)
    return [[1 if k < n else 0 for n in lengths] for k in range(steps)]


def _target(
    spec: ModelSpec, shape: tuple[int, int], rng: np.random.Generator, column: bool
) -> sp.Matrix:
    if spec.loss == "cross_entropy":
        raw = rng.random(size=shape) + 0.1
        raw = raw / raw.sum(axis=0 if column else 1, keepdims=True)
        data = [sp.Float(repr(float(v)), DPS) for v in raw.ravel()]
        matrix = sp.Matrix(shape[0], shape[1], data)
        # make each distribution sum to exactly one in 30 digits
        for j in range(shape[1] if column else shape[0]):
            if column:
                matrix[-1, j] = 1 - sum(matrix[:-1, j])
            else:
                matrix[j, -1] = 1 - sum(matrix[j, :-1])
        return matrix
    if spec.loss == "binary_cross_entropy":
        return sp.Matrix(
            shape[0], shape[1], [sp.Integer(int(v)) for v in rng.integers(0, 2, size=shape).ravel()]
        )
    return sp.Matrix(
        shape[0], shape[1], [sp.Float(repr(float(v)), DPS) for v in rng.normal(size=shape).ravel()]
    )


@dataclass(frozen=True)
class ScalarProof:
    """The outcome of comparing a derivation with scalar ``sympy.diff``.

    ``direction`` False (:func:`scalar_proof`): every entry was compared on its own.
    True (:func:`direction_proof`): one derivative along a random direction of all the
    parameters together was compared with the derivation's gradients, ``entries``
    of them, each weighted by the direction's entry.
    """

    spec: ModelSpec
    entries: int  # how many gradient entries were compared (or weighted into the sum)
    max_relative_error: float  # max |derived - diff| / max(1, |diff|)
    digits: int  # working precision
    direction: bool = False

    @property
    def ok(self) -> bool:
        return self.max_relative_error < 10.0 ** (-(self.digits - 5))


def _env(d: Derivation, values: dict[str, Any], sizes: ModelSpec | None = None) -> dict[Any, Any]:
    """Evaluator values (mp backend) for the derivation's leaves from oracle values.

    ``sizes``: the concrete spec whose sizes fill the ones ``d`` leaves symbolic
    (default ``d.spec``)."""
    graph = d.graph
    sizes = d.spec if sizes is None else sizes

    def arr(matrix: sp.Matrix) -> Any:
        rows = [[mpmath.mpf(str(v)) for v in row] for row in matrix.tolist()]
        return np.array(rows, dtype=object)

    env: dict[Any, Any] = {}
    for name, symbol in graph.params.items():
        env[symbol] = arr(values[name])
    for symbol, value in zip(graph.inputs, values["x"], strict=True):
        env[symbol] = arr(value)
    for symbol, value in zip(graph.targets, values["y"], strict=True):
        env[symbol] = arr(value)
    for initial in graph.initial_inputs.values():
        env[initial] = arr(values[initial.name])
    column = graph.notation.layout == "column"
    for symbol, row in zip(graph.masks, values.get("mask", []), strict=False):
        env[symbol] = arr(sp.Matrix([row]) if column else sp.Matrix(row))
    for key, size in graph.symbols.sizes.items():
        if isinstance(size, sp.Symbol):
            env[size] = getattr(sizes, key)
    return env


def scalar_proof(
    spec: ModelSpec, rng: np.random.Generator, names: list[str] | None = None
) -> ScalarProof:
    """Compare every entry of every gradient with ``sympy.diff`` of the scalar loss.

    Each entry is differentiated with every other number fixed at a random
    30-digit value, so ``sympy.diff`` sees the fully explicit unrolled loss as
    a function of that one entry; the derivation's expanded gradient
    (``Derivation.gradient(name, expand=True)``) is evaluated at the same point.
    """
    with mpmath.workdps(DPS):
        d = derive(spec)
        values = random_values(spec, rng)
        env = _env(d, values)
        worst = mpmath.mpf(0)
        count = 0
        for name in names or list(d.gradients):
            derived = Evaluator(env, backend="mp", dps=DPS)(d.gradient(name, expand=True))
            original = values[name]
            w = sp.Symbol("w", real=True)  # real: SymPy's assumption queries stay cheap
            for i in range(original.shape[0]):
                for j in range(original.shape[1]):
                    changed = original.copy()
                    changed[i, j] = w
                    loss = scalar_loss(spec, {**values, name: changed})
                    exact_mp = _value_at(sp.diff(loss, w), {w: mpmath.mpf(original[i, j]._mpf_)})
                    error = abs(exact_mp - derived[i, j]) / max(1, abs(exact_mp))
                    worst = max(worst, error)
                    count += 1
        return ScalarProof(spec, count, float(worst), DPS)


def _value_at(expr: sp.Expr, point: dict[sp.Symbol, Any]) -> Any:
    """``expr`` at ``point`` in mpmath (the caller's precision), each distinct node once.

    ``xreplace(...).evalf()`` rebuilds and re-walks the shared subtrees of a derivative;
    this walk is iterative and memoised.  Sums, products and powers are computed here;
    any other function is rebuilt on its numeric arguments and evaluated by SymPy.
    """
    memo: dict[sp.Basic, Any] = {}
    stack: list[sp.Basic] = [expr]
    while stack:
        node = stack[-1]
        if node in memo:
            stack.pop()
            continue
        if node in point:
            memo[node] = point[node]
            stack.pop()
            continue
        if node.is_Number or node.is_NumberSymbol:
            memo[node] = mpmath.mpf(sp.Float(node.evalf(DPS), DPS)._mpf_)
            stack.pop()
            continue
        if isinstance(node, (sp.Derivative, sp.Subs)) or not node.args:
            raise TypeError(f"sympy.diff left {node} unevaluated")
        waiting = [arg for arg in node.args if arg not in memo]
        if waiting:
            stack.extend(waiting)
            continue
        stack.pop()
        args = [memo[arg] for arg in node.args]
        if node.is_Add:
            memo[node] = mpmath.fsum(args)
        elif node.is_Mul:
            memo[node] = mpmath.fprod(args)
        elif node.is_Pow:
            memo[node] = mpmath.power(args[0], args[1])
        else:
            rebuilt = node.func(*(sp.Float(value, DPS) for value in args))
            memo[node] = mpmath.mpf(sp.Float(rebuilt.evalf(DPS), DPS)._mpf_)
    return memo[expr]


def directional_derivative(expr: sp.Expr, point: dict[Any, Any], direction: dict[Any, Any]) -> Any:
    """Σ_u ∂``expr``/∂u · ``direction``[u] at ``point`` (mpmath, the caller's precision),
    each partial derivative by ``sympy.diff``: d/ds ``expr``(point + s direction) at s = 0.

    ``point`` gives every free symbol of ``expr`` a number, ``direction`` some of them a
    slope (the others have none).  One ``sp.diff`` of a whole unrolled loss re-walks its
    shared subtrees in every nested derivative (each builds the free symbols and a
    ``replace`` of its subtree): the "hello" loss at T = 4 took 0.9 s here.  So
    ``sympy.cse`` names the repeated subexpressions first, ``expr`` = r(c_1, …, c_K, u)
    with c_k = e_k(c_1, …, c_{k-1}, u), and ``sympy.diff`` differentiates each piece in
    each symbol it reads; the chain rule of the total derivative adds them up in order
    (forward mode): ċ_k = Σ_v ∂e_k/∂v · v̇.  The same derivative, each piece once.
    """
    pieces = sp.numbered_symbols("c", cls=sp.Dummy, real=True)  # real: the loss is real
    replacements, (reduced,) = sp.cse(expr, symbols=pieces, order="none")
    value = dict(point)
    slope = dict(direction)

    def total(piece: sp.Expr) -> Any:
        return mpmath.fsum(
            _value_at(sp.diff(piece, v), value) * slope[v]
            for v in sorted(piece.free_symbols & slope.keys(), key=sp.default_sort_key)
        )

    for symbol, piece in replacements:
        slope[symbol] = total(piece)
        value[symbol] = _value_at(piece, value)
    return total(reduced)


def direction_proof(
    spec: ModelSpec, rng: np.random.Generator, derivation: Derivation | None = None
) -> ScalarProof:
    """Compare a derivation with ``sympy.diff`` along one random direction.

    Every parameter θ_P gets a random direction E_P (30-digit entries); the fully
    explicit unrolled loss of :func:`scalar_loss` is built once with a real symbol for
    every entry of every θ_P, and dL(θ + s E)/ds at s = 0 is taken by ``sympy.diff``
    (:func:`directional_derivative`: piece by piece after ``sympy.cse``, the chain rule
    seeded with E) at the random point θ.  The derivation's side is
    Σ_P ⟨∂L/∂θ_P, E_P⟩ from its expanded gradients at the same point.  A wrong entry
    of any gradient changes that sum unless its error is orthogonal to a random
    direction, so one derivative stands for all the entries (the per-entry
    :func:`scalar_proof` needs one per entry).

    ``spec`` has concrete sizes.  ``derivation``: the one to check when it is not
    ``derive(spec)`` — the document's own, with the same steps and structure,
    whose sizes may be symbolic (they are set to ``spec``'s); none is derived then.
    """
    with mpmath.workdps(DPS):
        d = derive(spec) if derivation is None else derivation
        sizes = ("n_in", "n_hidden", "n_out", "batch")
        sized = replace(d.spec, **{k: getattr(spec, k) for k in sizes})
        if sized != spec:
            raise ValueError(
                f"the derivation is of another model ({d.spec.steps} steps, spec "
                f"{d.spec.hash()[:12]}) than the proof's spec ({spec.steps} steps)"
            )
        values = random_values(spec, rng)
        env = _env(d, values, spec)
        directions: dict[str, sp.Matrix] = {}
        entries: dict[str, sp.Matrix] = {}  # a real symbol for each parameter entry
        point: dict[sp.Dummy, Any] = {}
        direction: dict[sp.Dummy, Any] = {}
        for name in d.gradients:
            rows, cols = values[name].shape
            data = rng.normal(size=(rows, cols)).ravel()
            directions[name] = sp.Matrix(rows, cols, [sp.Float(repr(float(v)), DPS) for v in data])
            entries[name] = sp.Matrix(
                rows, cols, [sp.Dummy(f"{name}_{k}", real=True) for k in range(rows * cols)]
            )
            for entry, at, e in zip(entries[name], values[name], directions[name], strict=True):
                point[entry], direction[entry] = mpmath.mpf(str(at)), mpmath.mpf(str(e))
        loss = scalar_loss(spec, {**values, **entries})
        exact_mp = directional_derivative(loss, point, direction)
        derived = mpmath.mpf(0)
        count = 0
        evaluator = Evaluator(env, backend="mp", dps=DPS)
        for name, e in directions.items():
            g = evaluator(d.gradient(name, expand=True))
            for i in range(e.shape[0]):
                for j in range(e.shape[1]):
                    derived += g[i, j] * mpmath.mpf(str(e[i, j]))
                    count += 1
        error = abs(exact_mp - derived) / max(1, abs(exact_mp))
        return ScalarProof(spec, count, float(error), DPS, direction=True)
