"""Reading cell files: TOML in, a checked :class:`~symbptt.model.cell.Cell` out.

The built-in cells (``elman``, ``lstm``, ``gru``) are files in
``symbptt/model/cells/`` read by exactly the code that reads a user's file.
A file is parsed, never executed: TOML by :mod:`tomllib`, each equation's
right-hand side by :func:`symbptt.expr.exprlang.syntax_tree` (a whitelist).

Every problem raises :class:`~symbptt.model.spec.SpecError` naming the file, the
line and equation where there is one, and what was expected.  A parameter
that no equation uses is a :class:`CellWarning`.  See docs/cells.md.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import keyword
import os
import re
import sys
import warnings
from collections.abc import Mapping
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import sympy as sp

from ..expr import functions, mexpr
from ..expr.exprlang import ExpressionError, syntax_tree
from . import equations
from .cell import HEAD_KEYS, Cell, Equation, Name, Notation, Parameter, Quantity
from .spec import SpecError

#: TOML reader: the standard library's, or tomli on Python 3.10 (a dependency there).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

__all__ = [
    "BUILTIN_CELLS",
    "MAX_CELL_BYTES",
    "CellWarning",
    "builtin_cells",
    "load_cell",
    "read_at_most",
    "special_file",
]

#: The largest cell file read, in bytes.
MAX_CELL_BYTES = 256 * 1024
#: The sizes a cell may use (the spec's n_in and n_hidden).
SIZES = ("n_in", "n_hidden")
#: What a state's ``initial`` may say: its value before the first step.
INITIAL_VALUES = ("zero", "input")
#: The built-in cells, in the order `symbptt cells` lists them.
BUILTIN_CELLS = ("elman", "lstm", "gru")

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_RESERVED = {"t", "k", "j", "T", "sum_t", "sum_k", "prod_j", "ones", "diag", "softmax"}
_TOP = {
    "name": str,
    "title": str,
    "description": str,
    "reference": str,
    "readout": str,
    "activation": str,
    "equations": list,
    "inputs": dict,
    "states": dict,
    "parameters": dict,
    "roles": dict,
    "notations": dict,
}
_REQUIRED = ("name", "description", "reference", "readout", "equations", "inputs", "states")
_NOTATION_KEYS = {
    "seed",
    "title",
    "layout",
    "first_step",
    "index",
    "loss",
    "functions",
    "recurrent_first",
    "notes",
    "partials",
    "parameter_order",
    "updates",
    "chain_through_logits",
    "names",
}
_NAME_KEYS = {"ascii", "latex", "description", "layer", "adjoint", "initial", "initial_latex"}
_EQUATION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[\s*t\s*\]\s*=(?!=)(.*)\Z", re.S)


class CellWarning(UserWarning):
    """A cell file is valid but probably not what was meant (e.g. an unused parameter)."""


class _Reader:
    """Checks one parsed file and builds the Cell; ``fail`` names the file and place."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text
        self.unused: list[str] = []

    def fail(self, what: str, line: int = 0) -> SpecError:
        if not self.text:  # a mapping, not a file: no lines to point at
            return SpecError(f"{self.source}: {what}")
        where = f"{self.source}, line {line}" if line else self.source
        return SpecError(f"cell file {where}: {what}")

    def line_of(self, needle: str) -> int:
        pos = self.text.find(needle)
        return self.text.count("\n", 0, pos) + 1 if pos >= 0 else 0

    # -- plain fields ----------------------------------------------------------------
    def typed(self, table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = {str: "a string", list: "an array", dict: "a table", int: "an integer"}
            raise self.fail(f"{where}{key} is {value!r}; expected {expected.get(kind, kind)}")
        return value

    def identifier(self, name: str, what: str, head: bool = True) -> str:
        if not _IDENT.match(name) or keyword.iskeyword(name) or name.endswith("__"):
            raise self.fail(
                f"{what} {name!r} is not a valid name; expected a letter then letters, "
                "digits or underscores"
            )
        if name in _RESERVED or (head and name in HEAD_KEYS) or name in functions.ACTIVATIONS:
            raise self.fail(f"{what} {name!r} is reserved by symbptt; choose another name")
        return name

    def read(self, data: dict[str, Any]) -> Cell:
        unknown = sorted(set(data) - set(_TOP))
        if unknown:
            raise self.fail(
                f"unknown key(s) {', '.join(map(repr, unknown[:5]))}; "
                f"expected some of {', '.join(_TOP)}"
            )
        for key in _REQUIRED:
            if key not in data:
                raise self.fail(f"the key {key!r} is missing")
        for key, kind in _TOP.items():
            if key in data:
                self.typed(data, key, kind, "")
        name = self.identifier(data["name"], "the cell name")
        inputs = self.quantities(data["inputs"], "input", "inputs")
        if len(inputs) != 1:
            raise self.fail(f"[inputs] declares {len(inputs)} inputs; expected exactly one")
        states = self.quantities(data["states"], "state", "states")
        if not states:
            raise self.fail("[states] declares no state; expected at least one (e.g. h)")
        parameters = self.parameters(data.get("parameters", {}))
        activation = data.get("activation")
        if activation is not None:
            self.identifier(activation, "the activation name")
        declared = {q.key: q for q in inputs + states}
        taken = set(declared)
        for p in parameters:
            if p.key in taken:
                raise self.fail(f"the name {p.key!r} is defined twice (parameter and quantity)")
            taken.add(p.key)
        eqs = self.equations(data["equations"], declared, {p.key for p in parameters}, activation)
        intermediates = tuple(
            Quantity(eq.target, "intermediate", "") for eq in eqs if eq.target not in declared
        )
        readout = data["readout"]
        if readout not in {q.key for q in states + intermediates}:
            raise self.fail(
                f"readout is {readout!r}; expected a state or an equation's target "
                f"({', '.join(q.key for q in states + intermediates)})"
            )
        roles = self.roles(data.get("roles", {}), data.get("parameters", {}), declared, eqs)
        cell = Cell(
            name=name,
            title=data.get("title", name),
            description=data["description"],
            reference=data["reference"],
            source=self.source,
            inputs=inputs,
            states=states,
            intermediates=intermediates,
            parameters=parameters,
            equations=eqs,
            readout=readout,
            activation=activation,
            notations={},
            roles=roles,
            definition=json.dumps(data, separators=(",", ":"), default=str),  # in file order
        )
        intermediates = self.shapes(cell)
        cell = _replace(cell, intermediates=intermediates)
        notations = data.get("notations", {})
        if not notations:
            raise self.fail("[notations] is empty; expected at least one notation (e.g. xh)")
        for key, table in notations.items():
            self.identifier(key, "the notation name")
            cell.notations[key] = self.notation(cell, key, table)
        for unused in self.unused:
            warnings.warn(
                f"cell file {self.source}: the parameter {unused!r} is not used by any equation",
                CellWarning,
                stacklevel=5,
            )
        return cell

    def quantities(self, table: dict[str, Any], kind: str, where: str) -> tuple[Quantity, ...]:
        out = []
        for key, size in table.items():
            self.identifier(key, f"[{where}] name")
            initial = ""
            if kind == "state" and isinstance(size, dict):
                size, initial = self.state_entry(key, size)
            if size not in SIZES:
                also = " (or, for a state, { size = ..., initial = ... })" * (kind == "state")
                raise self.fail(
                    f"[{where}] {key} has size {size!r}; expected one of {', '.join(SIZES)}{also}"
                )
            out.append(Quantity(key, kind, size, initial))
        return tuple(out)

    def state_entry(self, key: str, entry: dict[str, Any]) -> tuple[Any, str]:
        """``h = { size = "n_hidden", initial = "input" }``: the size and the pinned start."""
        extra = sorted(set(entry) - {"size", "initial"})
        if extra or "size" not in entry:
            raise self.fail(
                f"[states] {key} is {entry!r}; expected a size name or "
                '{ size = "n_hidden", initial = "zero" or "input" }'
            )
        initial = entry.get("initial", "")
        if initial not in INITIAL_VALUES:
            raise self.fail(
                f"[states] {key} has initial {initial!r}; expected one of "
                f"{', '.join(map(repr, INITIAL_VALUES))} (leave it out for the spec's "
                "initial_state)"
            )
        return entry["size"], initial

    def parameters(self, table: dict[str, Any]) -> tuple[Parameter, ...]:
        out = []
        for key, entry in table.items():
            self.identifier(key, "[parameters] name")
            if not isinstance(entry, dict):
                raise self.fail(f"[parameters] {key} is {entry!r}; expected a table")
            extra = sorted(set(entry) - {"shape", "kind", "role"})
            if extra:
                raise self.fail(f"[parameters] {key} has unknown key(s) {', '.join(extra)}")
            shape: Any = entry.get("shape")
            good = (
                isinstance(shape, list)
                and len(shape) == 2
                and all(s in SIZES or (s == 1 and not isinstance(s, bool)) for s in shape)
            )
            if not good:
                raise self.fail(
                    f"[parameters] {key} has shape {shape!r}; expected [rows, cols] with "
                    f"each one of {', '.join(SIZES)} or 1"
                )
            kind = entry.get("kind")
            if kind not in ("weight", "bias", "vector"):
                raise self.fail(
                    f"[parameters] {key} has kind {kind!r}; expected weight, bias or vector"
                )
            if kind != "weight" and (shape[1] != 1 or shape[0] == 1):
                raise self.fail(
                    f"[parameters] {key} is a {kind} of shape {shape!r}; expected [size, 1]"
                )
            out.append(Parameter(key, (shape[0], shape[1]), kind))
        return tuple(out)

    def equations(
        self,
        texts: list[Any],
        declared: dict[str, Quantity],
        params: set[str],
        activation: str | None,
    ) -> tuple[Equation, ...]:
        out: list[Equation] = []
        defined: dict[str, int] = {}
        states = {k for k, q in declared.items() if q.kind == "state"}
        inputs = {k for k, q in declared.items() if q.kind == "input"}
        targets_all = []
        for text in texts:
            if not isinstance(text, str):
                raise self.fail(f"an equation is {text!r}; expected a string 'h[t] = ...'")
            match = _EQUATION.match(text)
            if match is None:
                raise self.fail(
                    f"equation {text!r}: expected 'name[t] = expression'", self.line_of(text)
                )
            targets_all.append(match.group(1))
        later = set(targets_all)
        used_params: set[str] = set()
        for index, text in enumerate(texts):
            line = self.line_of(text)
            match = _EQUATION.match(text)
            assert match is not None
            target, rhs = match.group(1), match.group(2)

            def bad(what: str, text: str = text, line: int = line) -> SpecError:
                return self.fail(f"equation {text!r}: {what}", line)

            if target in inputs:
                raise bad(f"{target} is an input; an equation defines a state or an intermediate")
            if target in params:
                raise bad(
                    f"{target} is a parameter; an equation defines a state or an intermediate"
                )
            if target in defined:
                raise bad(f"{target}[t] is defined twice (also by equation {defined[target] + 1})")
            self.identifier(target, "the equation target")
            try:
                tree, error = syntax_tree(rhs)
                found = equations.reads(tree, error)
            except ExpressionError as exc:
                raise bad(_one_line(exc)) from None
            reads: list[tuple[str, int]] = []
            for name, offset, _node in found:
                if offset > 0:
                    raise bad(f"{name}[t+{offset}] reads a future step; expected t or t-1")
                if name in inputs:
                    if offset != 0:
                        raise bad(f"the input {name} is read at t{offset}; expected {name}[t]")
                elif name in states:
                    if offset < -1:
                        raise bad(f"{name}[t{offset}] reaches back {-offset} steps; expected t-1")
                    if offset == 0 and name not in defined:
                        raise bad(self._order(name, target, later))
                elif name in later:
                    if offset != 0:
                        raise bad(
                            f"{name}[t{offset}] reads an intermediate at another step; only "
                            f"states carry across steps (declare {name} under [states])"
                        )
                    if name not in defined:
                        raise bad(self._order(name, target, later))
                elif name in params:
                    raise bad(f"{name} is a parameter; write it without a step index")
                else:
                    raise bad(f"unknown name {name!r}; expected {self._known(declared, later)}")
                reads.append((name, offset))
            for name, node in equations.names_in(tree):
                if isinstance(node, ast.Name) and _is_called(tree, node):
                    if name != activation and name not in functions.ACTIVATIONS:
                        allowed = sorted(functions.ACTIVATIONS) + (
                            [activation] if activation else []
                        )
                        raise bad(
                            f"unknown function {name!r}; expected one of {', '.join(allowed)}"
                        )
                    continue
                if name == "t":
                    raise bad("t is only a step index, as in h[t-1]")
                if name in params:
                    used_params.add(name)
                    continue
                if name in declared or name in later:
                    raise bad(f"{name} needs a step index, e.g. {name}[t]")
                known = ", ".join(sorted(params)) or "none"
                raise bad(f"unknown name {name!r}; expected a parameter ({known})")
            defined[target] = index
            out.append(Equation(target, text.strip(), line, tree, error, tuple(reads)))
        for state in sorted(states - set(defined), key=list(declared).index):
            raise self.fail(
                f"the state {state!r} is never updated; expected an equation {state}[t] = ..."
            )
        self.unused = sorted(params - used_params)
        return tuple(out)

    @staticmethod
    def _order(name: str, target: str, later: set[str]) -> str:
        if name == target:
            return f"{target}[t] reads itself: a cycle; a state's previous value is {target}[t-1]"
        if name in later:
            return (
                f"{name}[t] is read before its equation; order the equations so each reads "
                "only earlier ones (a cycle among equations cannot be ordered)"
            )
        return f"{name}[t] has no equation"

    @staticmethod
    def _known(declared: dict[str, Quantity], later: set[str]) -> str:
        names = sorted(set(declared) | later)
        return "one of " + ", ".join(names)

    def roles(
        self,
        table: dict[str, Any],
        params: dict[str, Any],
        declared: dict[str, Quantity],
        eqs: tuple[Equation, ...],
    ) -> tuple[tuple[str, str], ...]:
        out: dict[str, str] = {q.key: "input" for q in declared.values() if q.kind == "input"}
        known = set(declared) | {eq.target for eq in eqs}
        for key, role in table.items():
            if key not in known or not isinstance(role, str):
                raise self.fail(f"[roles] {key} = {role!r}; expected a quantity's name = a string")
            out[key] = role
        for key, entry in params.items():
            if isinstance(entry, dict) and "role" in entry:
                out[key] = str(entry["role"])
        return tuple(out.items())

    # -- shapes ----------------------------------------------------------------------
    def shapes(self, cell: Cell) -> tuple[Quantity, ...]:
        """Build every equation once with symbolic sizes; infer the intermediates' sizes."""
        env = _ShapeEnv(cell)
        for eq in cell.equations:
            try:
                value = equations.build(eq.tree, env, eq.error)
            except ExpressionError as exc:
                raise self.fail(f"equation {eq.text!r}: {_one_line(exc)}", eq.line) from None
            if not mexpr.is_matrix(value):
                raise self.fail(f"equation {eq.text!r}: the right-hand side is a number", eq.line)
            rows, cols = value.shape
            size = {v: k for k, v in env.sizes.items()}.get(rows)
            if cols != env.batch or size is None:
                raise self.fail(
                    f"equation {eq.text!r}: the right-hand side has shape ({rows}, {cols}); "
                    f"expected (size, {env.batch}) with size one of {', '.join(SIZES)}",
                    eq.line,
                )
            if eq.target in env.sized and env.sized[eq.target] != size:
                raise self.fail(
                    f"equation {eq.text!r}: {eq.target} is declared with size "
                    f"{env.sized[eq.target]} but its equation gives {size}",
                    eq.line,
                )
            env.sized[eq.target] = size
        return tuple(Quantity(q.key, q.kind, env.sized[q.key]) for q in cell.intermediates)

    # -- notations -------------------------------------------------------------------
    def notation(self, cell: Cell, key: str, table: Any) -> Notation:
        where = f"[notations.{key}]"
        if not isinstance(table, dict):
            raise self.fail(f"{where} is {table!r}; expected a table")
        unknown = sorted(set(table) - _NOTATION_KEYS)
        if unknown:
            raise self.fail(f"{where} has unknown key(s) {', '.join(unknown)}")
        layout = table.get("layout", "column")
        if layout not in ("column", "row"):
            raise self.fail(f"{where} layout is {layout!r}; expected 'column' or 'row'")
        style = table.get("index", "sub")
        if style not in ("sub", "sup", "call"):
            raise self.fail(f"{where} index is {style!r}; expected 'sub', 'sup' or 'call'")
        t0 = table.get("first_step", 1)
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 not in (0, 1):
            raise self.fail(f"{where} first_step is {t0!r}; expected 0 or 1")
        loss = table.get("loss", {"ascii": "L", "latex": "L"})
        if not isinstance(loss, dict) or set(loss) != {"ascii", "latex"}:
            raise self.fail(f"{where} loss is {loss!r}; expected {{ ascii = ..., latex = ... }}")
        fns = table.get("functions", {})
        expected_fns = {"output"} | ({cell.activation} if cell.activation else set())
        if not isinstance(fns, dict) or not set(fns) <= expected_fns:
            raise self.fail(
                f"{where} functions is {fns!r}; expected LaTeX names for "
                f"{', '.join(sorted(expected_fns))}"
            )
        fn_latex = {"output": "g"} | ({cell.activation: "f"} if cell.activation else {})
        fn_latex |= {k: str(v) for k, v in fns.items()}
        ordered_fns = tuple(
            (k, fn_latex[k]) for k in ([cell.activation] if cell.activation else []) + ["output"]
        )
        names_table = table.get("names")
        if not isinstance(names_table, dict):
            raise self.fail(f"{where} has no names table; expected [notations.{key}.names]")
        names = self.names(cell, key, names_table, t0, style)
        notes = table.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise self.fail(f"{where} notes is {notes!r}; expected an array of strings")
        habits = self.habits(cell, where, table)
        return Notation(
            name=key,
            cell=cell.name,
            seed=str(table.get("seed", "")),
            title=str(table.get("title", key)),
            layout=layout,
            t0=t0,
            style=style,
            names=names,
            loss_ascii=self.identifier(str(loss["ascii"]), f"{where} loss name", head=False),
            loss_latex=str(loss["latex"]),
            functions=ordered_fns,
            recurrent_first=bool(table.get("recurrent_first", False)),
            notes=tuple(notes),
            **habits,
        )

    def habits(self, cell: Cell, where: str, table: dict[str, Any]) -> dict[str, Any]:
        """A notation's habits in documents: how it writes partials, orders, updates."""
        out: dict[str, Any] = {}
        for key, choices in (
            ("partials", ("fraction", "operator")),
            ("updates", ("assign", "delta")),
        ):
            value = table.get(key, choices[0])
            if value not in choices:
                raise self.fail(
                    f"{where} {key} is {value!r}; expected {' or '.join(map(repr, choices))}"
                )
            out[key] = value
        through = table.get("chain_through_logits", False)
        if not isinstance(through, bool):
            raise self.fail(f"{where} chain_through_logits is {through!r}; expected true or false")
        out["chain_through_logits"] = through
        order = table.get("parameter_order", [])
        keys = [p.key for p in cell.parameters] + ["W_out", "b_out"]
        if order and (not isinstance(order, list) or sorted(map(str, order)) != sorted(keys)):
            raise self.fail(
                f"{where} parameter_order is {order!r}; expected each of {', '.join(keys)} once"
            )
        out["parameter_order"] = tuple(order)
        return out

    def names(
        self, cell: Cell, notation: str, table: dict[str, Any], t0: int, style: str
    ) -> tuple[Name, ...]:
        where = f"[notations.{notation}.names]"
        weights = [p.key for p in cell.parameters if p.kind in ("weight", "vector")] + ["W_out"]
        biases = [p.key for p in cell.parameters if p.kind == "bias"] + ["b_out"]
        series = [q.key for q in cell.inputs] + [eq.target for eq in cell.equations]
        series += ["logits", "y_hat", "y"]
        keys = weights + biases + series
        missing = [k for k in keys if k not in table]
        if missing:
            raise self.fail(
                f"{where} does not name {', '.join(missing)}; every symbol needs a name"
            )
        extra = sorted(set(table) - set(keys))
        if extra:
            raise self.fail(f"{where} names unknown symbol(s) {', '.join(extra)}")
        out = []
        seen: dict[str, str] = {}
        states = {q.key for q in cell.states}
        for key in keys:
            entry = table[key]
            if not isinstance(entry, dict) or not {"ascii", "latex"} <= set(entry):
                raise self.fail(
                    f"{where} {key} is {entry!r}; expected {{ ascii = ..., latex = ... }}"
                )
            unknown = sorted(set(entry) - _NAME_KEYS)
            if unknown:
                raise self.fail(f"{where} {key} has unknown key(s) {', '.join(unknown)}")
            ascii_name = self.identifier(
                str(entry["ascii"]), f"{where} {key}: the ASCII name", head=False
            )
            if ascii_name in seen:
                raise self.fail(
                    f"{where} {key} and {seen[ascii_name]} are both called {ascii_name!r}"
                )
            seen[ascii_name] = key
            kind = "series" if key in series else "param"
            initial = initial_latex = ""
            if key in states:
                initial = str(entry.get("initial", ascii_name + "_0"))
                self.identifier(initial, f"{where} {key}: the initial state's name", head=False)
                initial_latex = str(entry.get("initial_latex", f"{entry['latex']}_{{{t0 - 1}}}"))
            out.append(
                Name(
                    key=key,
                    kind=kind,
                    ascii=ascii_name,
                    latex=str(entry["latex"]),
                    description=str(entry.get("description", key)),
                    role=cell.role_of(key),
                    layer=str(entry.get("layer", "")),
                    adjoint=str(entry.get("adjoint", "")),
                    initial=initial,
                    initial_latex=initial_latex,
                )
            )
        self.distinct_derived_names(where, out)
        return tuple(out)

    def distinct_derived_names(self, where: str, names: list[Name]) -> None:
        """The names derived from the notation's (adjoints, δs, initial states) clash with none."""
        seen: dict[str, str] = {}
        for entry in names:
            derived = [(entry.ascii, entry.key)]
            if entry.kind == "series":
                derived += [
                    (entry.adjoint_ascii, f"the adjoint of {entry.key}"),
                    ("delta_" + entry.ascii, f"the argument's adjoint of {entry.key}"),
                ]
            else:
                derived.append(("d" + entry.ascii, f"the gradient of {entry.key}"))
            if entry.initial:
                derived.append((entry.initial, f"the initial value of {entry.key}"))
            for name, what in derived:
                if name in seen and seen[name] != what:
                    raise self.fail(
                        f"{where}: {what} and {seen[name]} are both called {name!r}; "
                        "rename one of them"
                    )
                seen[name] = what


def _is_called(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _one_line(exc: ExpressionError) -> str:
    return exc.message


def _replace(cell: Cell, **changes: Any) -> Cell:
    from dataclasses import replace

    return replace(cell, **changes)


class _ShapeEnv:
    """A column-layout step with symbolic sizes, to check shapes once at load time."""

    layout = "column"

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.sizes = {"n_in": sp.Symbol("n_0"), "n_hidden": sp.Symbol("n_1")}
        self.batch = sp.Symbol("m")
        self.sized: dict[str, str] = {q.key: q.size for q in cell.inputs + cell.states}

    def size(self, name: str | int) -> Any:
        return sp.Integer(1) if name == 1 else self.sizes[str(name)]

    def param(self, key: str) -> Any:
        p = self.cell.parameter(key)
        symbol = sp.MatrixSymbol(key, self.size(p.shape[0]), self.size(p.shape[1]))
        if p.per_unit:
            return mexpr.broadcast_bias(symbol, "column", self.batch)
        return symbol

    def series(self, key: str, offset: int) -> Any:
        return sp.MatrixSymbol(f"{key}_{offset}", self.sizes[self.sized[key]], self.batch)

    def function(self, name: str) -> Any:
        if name == self.cell.activation:
            return functions.ACTIVATIONS["tanh"]
        return functions.ACTIVATIONS.get(name)


# -- finding and caching files -------------------------------------------------------


def builtin_cells() -> tuple[str, ...]:
    return BUILTIN_CELLS


def _builtin_text(name: str) -> str:
    folder = resources.files("symbptt.model").joinpath("cells")
    return folder.joinpath(f"{name}.toml").read_text("utf-8")


@cache
def _load_builtin(name: str) -> Cell:
    return _parse(_builtin_text(name), f"{name}.toml (built-in)")


def special_file(path: Path) -> bool:
    """Whether ``path`` is there but is neither a regular file nor a folder: a pipe or a
    device, whose reading may block for ever or never end."""
    return path.exists() and not path.is_dir() and not path.is_file()


def read_at_most(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The bytes of the file ``path``, or None when it holds more than ``limit`` (read no
    further than that); OSError as ``open`` raises it."""
    with open(path, "rb") as handle:
        raw = handle.read(limit + 1)
    return None if len(raw) > limit else raw


@lru_cache(maxsize=64)
def _load_file(path: str, mtime_ns: int, size: int) -> Cell:
    raw = read_at_most(path, MAX_CELL_BYTES)
    if raw is None:
        raise SpecError(f"cell file {path}: larger than {MAX_CELL_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"cell file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return _parse(text, path)


def _parse(text: str, source: str) -> Cell:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"cell file {source}: not valid TOML: {exc}") from None
    return _Reader(source, text).read(data)


#: The value types of a cell mapping: what TOML gives (no dates).
_PLAIN = (str, int, float, bool)


def _plain(value: Any, where: str, depth: int = 0) -> None:
    """Refuse what a parsed TOML file could not hold: a mapping of strings to plain values."""
    if depth > 8:
        raise SpecError(f"cell mapping: {where} is nested deeper than 8 levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(f"cell mapping: {where} has the key {key!r}; expected strings")
            _plain(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, _PLAIN):
        raise SpecError(
            f"cell mapping: {where} is a {type(value).__name__}; "
            "expected a string, number, boolean, list or table"
        )


def _as_toml_data(value: Any) -> Any:
    """Mappings as dicts and sequences as lists, as a parsed TOML file has them."""
    if isinstance(value, Mapping):
        return {key: _as_toml_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_toml_data(item) for item in value]
    return copy.copy(value)


@lru_cache(maxsize=64)
def _load_definition(definition: str) -> Cell:
    return _Reader("cell mapping", "").read(json.loads(definition))


def cell_from_mapping(data: Mapping[str, Any]) -> Cell:
    """A cell from a Python mapping with the keys of a cell file (docs/cells.md).

    The same reader as for a file checks it and builds the :class:`Cell`; an
    error names the key.  ``cell.as_mapping()`` gives the mapping back, so a
    cell file, its parsed TOML and this mapping are one thing.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"cell mapping: got {type(data).__name__}; expected a mapping")
    _plain(data, "")
    plain = _as_toml_data(data)
    if len(json.dumps(plain, default=str)) > MAX_CELL_BYTES:
        raise SpecError(f"cell mapping: larger than {MAX_CELL_BYTES} bytes")
    return _load_definition(json.dumps(plain, separators=(",", ":")))


def load_cell(cell: str | os.PathLike[str]) -> Cell:
    """A built-in cell by name (``"lstm"``) or a cell file by path (``"my_cell.toml"``)."""
    if isinstance(cell, str) and cell in BUILTIN_CELLS:
        return _load_builtin(cell)
    if not isinstance(cell, (str, os.PathLike)):
        raise SpecError(f"cell: got {cell!r}; expected a built-in cell name or a .toml file path")
    path = Path(cell)
    if path.suffix != ".toml":
        raise SpecError(
            f"cell: got {str(cell)!r}; expected one of {', '.join(BUILTIN_CELLS)} "
            "or the path of a .toml cell file"
        )
    try:
        stat = path.stat()
    except OSError as exc:
        raise SpecError(f"cell file {cell}: cannot be read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise SpecError(f"cell file {cell}: not a regular file")
    try:
        return _load_file(str(path), stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        raise SpecError(f"cell file {cell}: cannot be read ({exc.strerror or exc})") from None
