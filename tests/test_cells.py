"""Cells as data: the built-in cell files, a user's file, and every bad input.

The gradients of every cell are proven against scalar ``sympy.diff`` in
tests/test_proof.py; here the generic-step form (the loop body of BPTT) is
checked against the unrolled derivation at every step, numerically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy as sp

import symbptt
from symbptt import ModelSpec
from symbptt.core.derive import instantiate
from symbptt.core.evaluate import Evaluator
from symbptt.model import BUILTIN_CELLS, CellWarning, cell_from_mapping, load_cell
from symbptt.model.load import tomllib
from symbptt.model.spec import SpecError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GRU_CELL = """
name = "mygru"
description = "a GRU written by a user"
reference = "Cho et al. 2014"
readout = "h"
equations = [
    "r[t] = sigmoid(W_xr @ x[t] + W_hr @ h[t-1] + b_r)",
    "z[t] = sigmoid(W_xz @ x[t] + W_hz @ h[t-1] + b_z)",
    "g[t] = tanh(W_xh @ x[t] + W_hh @ (r[t] * h[t-1]) + b_h)",
    "h[t] = z[t] * h[t-1] + (1 - z[t]) * g[t]",
]

[inputs]
x = "n_in"

[states]
h = "n_hidden"

[parameters]
W_xr = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hr = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_r = { shape = ["n_hidden", 1], kind = "bias" }
W_xz = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hz = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_z = { shape = ["n_hidden", 1], kind = "bias" }
W_xh = { shape = ["n_hidden", "n_in"], kind = "weight" }
W_hh = { shape = ["n_hidden", "n_hidden"], kind = "weight" }
b_h = { shape = ["n_hidden", 1], kind = "bias" }

[notations.xh]
layout = "column"

[notations.xh.names]
W_xr = { ascii = "W_xr", latex = "W_{xr}" }
W_hr = { ascii = "W_hr", latex = "W_{hr}" }
b_r = { ascii = "b_r", latex = "b_r" }
W_xz = { ascii = "W_xz", latex = "W_{xz}" }
W_hz = { ascii = "W_hz", latex = "W_{hz}" }
b_z = { ascii = "b_z", latex = "b_z" }
W_xh = { ascii = "W_xh", latex = "W_{xh}" }
W_hh = { ascii = "W_hh", latex = "W_{hh}" }
b_h = { ascii = "b_h", latex = "b_h" }
W_out = { ascii = "W_hy", latex = "W_{hy}" }
b_out = { ascii = "b_y", latex = "b_y" }
x = { ascii = "x", latex = "x" }
r = { ascii = "r", latex = "r" }
z = { ascii = "z", latex = "z" }
g = { ascii = "g", latex = "g" }
h = { ascii = "h", latex = "h" }
logits = { ascii = "s", latex = "s" }
y_hat = { ascii = "y_hat", latex = '\\hat{y}' }
y = { ascii = "y", latex = "y" }
"""


def _write(tmp_path: Path, text: str, name: str = "cell.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_cells_load_through_the_file_reader() -> None:
    for name in BUILTIN_CELLS:
        cell = load_cell(name)
        assert cell.name == name
        assert cell.source == f"{name}.toml (built-in)"
        assert cell.readout in {q.key for q in cell.states}
    assert set(load_cell("elman").notations) == {"uvw", "xh", "layered", "aa"}
    assert [q.key for q in load_cell("lstm").states] == ["h", "c"]


def test_a_user_cell_file_equals_the_builtin_gru(tmp_path: Path) -> None:
    path = _write(tmp_path, GRU_CELL)
    mine = symbptt.derive(symbptt.ModelSpec(cell=str(path), steps=3))
    builtin = symbptt.derive(symbptt.ModelSpec(cell="gru", steps=3))
    assert list(mine.gradients) == list(builtin.gradients)
    for name, gradient in builtin.gradients.items():
        assert mine.gradients[name] == gradient


def test_spec_accepts_a_path_object_and_names_the_cell(tmp_path: Path) -> None:
    path = _write(tmp_path, GRU_CELL)
    spec = symbptt.ModelSpec(cell=path)  # type: ignore[arg-type]
    assert spec.cell == str(path)
    assert spec.model.name == "mygru"
    assert '"cell":' in spec.canonical()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t+1])"), r"h\[t\+1\] reads a future step"),
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * q[t-1])"), r"unknown name 'q'"),
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]"), r"syntax error"),
        (("W_hh @ (r[t] * h[t-1])", "W_xh @ (r[t] * h[t-1])"), r"@ does not fit"),
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ r[t].__class__"), r"attribute .__class__"),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * __import__('os'))"),
            r"double-underscore names are refused",
        ),
        (("tanh(W_xh", "softplus(W_xh"), r"unknown function 'softplus'"),
        # numbers: each a finite float64 (they were a KeyError, a NaN check or a hang)
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) / 0"), r"division by zero"),
        (("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) * (1 / 0)"), r"division by zero"),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) * 1e309"),
            r"the number 1e309 is not a finite float64",
        ),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) * 10 ** 400"),
            r"10 \*\* 400 is not a finite float64",
        ),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) * 10 ** 10 ** 10"),
            r"10 \*\* 10 \*\* 10 is not a finite float64",
        ),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) * (-1) ** 0.5"),
            r"\(-1\) \*\* 0.5 is not a finite float64",
        ),
        (
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ (r[t] * h[t-1]) / 1e-320"),
            r"/ 1e-320 is not a finite float64",
        ),
        (  # the checker's step function (A > 0) is no part of a cell equation
            ("W_hh @ (r[t] * h[t-1])", "W_hh @ ((r[t] > 0) * h[t-1])"),
            r"not part of a cell equation's language",
        ),
        (('"r[t] = sigmoid', '"g[t] = sigmoid'), r"g\[t\] is defined twice"),
        (('"z[t] = sigmoid(W_xz @ x[t]', '"z[t] = sigmoid(W_xz @ g[t]'), r"g\[t\] is read before"),
        (("h[t] = z[t] * h[t-1]", "q[t] = z[t] * h[t-1]"), r"the state 'h' is never updated"),
        (
            ('z = { shape = ["n_hidden", "n_hidden"]', 'z = { shape = ["n_hidden", "n_out"]'),
            "shape",
        ),
        (("W_xr @ x[t]", "W_xr @ x[t-1]"), r"the input x is read at t-1"),
        (('readout = "h"', 'readout = "q"'), r"readout is 'q'"),
        (('kind = "bias" }', 'kind = "biased" }'), r"kind 'biased'"),
        (('name = "mygru"', 'name = "mygru"\ncolour = "blue"'), r"unknown key\(s\) 'colour'"),
        (("y = { ascii", "Y = { ascii"), r"does not name y"),
        (('z = { ascii = "z"', 'z = { ascii = "r"'), r"both called 'r'"),
        (('"r[t] = sigmoid', '"r = sigmoid'), r"expected 'name\[t\] = expression'"),
        (("equations = [", "equations = [ 1,"), r"an equation is 1"),
        (("[inputs]", "[inputs"), r"not valid TOML"),
        (
            ('g = { ascii = "g"', 'g = { ascii = "dh"'),
            r"the adjoint of h and g are both called 'dh'",
        ),
        (('layout = "column"', 'layout = "column"\npartials = "nabla"'), r"partials is 'nabla'"),
        (('layout = "column"', 'layout = "column"\nupdates = "adam"'), r"updates is 'adam'"),
        (
            ('layout = "column"', 'layout = "column"\nchain_through_logits = 1'),
            r"chain_through_logits is 1; expected true or false",
        ),
        (  # every parameter once: W_hh is missing
            ('layout = "column"', 'layout = "column"\nparameter_order = ["W_out", "b_out"]'),
            r"parameter_order is .*expected each of W_xr, .*W_out, b_out once",
        ),
    ],
)
def test_bad_cell_files_are_refused_naming_file_line_and_equation(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GRU_CELL
    path = _write(tmp_path, GRU_CELL.replace(old, new, 1))
    with pytest.raises(SpecError, match=message) as info:
        symbptt.ModelSpec(cell=str(path))
    text = str(info.value)
    assert text.startswith(f"cell file {path}")
    assert "\n" not in text
    if "equation" in text and "line" in text:
        assert "line " in text


def test_the_line_of_a_bad_equation_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, GRU_CELL.replace("h[t-1]) + b_h", "h[t+1]) + b_h"))
    with pytest.raises(SpecError) as info:
        load_cell(str(path))
    lineno = GRU_CELL.splitlines().index(
        '    "g[t] = tanh(W_xh @ x[t] + W_hh @ (r[t] * h[t-1]) + b_h)",'
    )
    assert f", line {lineno + 1}:" in str(info.value)
    assert "equation 'g[t] = tanh(W_xh @ x[t] + W_hh @ (r[t] * h[t+1]) + b_h)'" in str(info.value)


def test_an_unused_parameter_is_a_warning(tmp_path: Path) -> None:
    text = GRU_CELL.replace("[notations.xh]", "[notations.xh]").replace(
        'b_h = { shape = ["n_hidden", 1], kind = "bias" }',
        'b_h = { shape = ["n_hidden", 1], kind = "bias" }\n'
        'W_extra = { shape = ["n_hidden", "n_in"], kind = "weight" }',
    )
    text = text.replace(
        'b_h = { ascii = "b_h"', 'W_extra = { ascii = "W_e", latex = "W_e" }\nb_h = { ascii = "b_h"'
    )
    path = _write(tmp_path, text)
    with pytest.warns(CellWarning, match="'W_extra' is not used"):
        load_cell(str(path))


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("tree", r"expected one of elman, lstm, gru or the path of a \.toml cell file"),
        ("missing.toml", r"cell file missing\.toml: cannot be read"),
        (3, r"cell: got 3; expected a built-in cell name"),
    ],
)
def test_unknown_cells_are_refused(cell: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        symbptt.ModelSpec(cell=cell)  # type: ignore[arg-type]


def test_a_huge_or_binary_cell_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (300 * 1024))
    with pytest.raises(SpecError, match="larger than"):
        load_cell(str(big))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_cell(str(binary))
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(SpecError, match="not a regular file"):
        load_cell(str(folder))


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GRU_CELL.encode())
    assert load_cell(str(path)).name == "mygru"


def test_spec_refuses_a_notation_or_activation_the_cell_lacks() -> None:
    with pytest.raises(SpecError, match=r"the lstm cell is written in 'xh', 'layered'"):
        symbptt.ModelSpec(cell="lstm", notation="uvw")
    with pytest.raises(SpecError, match=r"the gru cell fixes its own activations"):
        symbptt.ModelSpec(cell="gru", hidden="relu")


@pytest.mark.parametrize(
    ("cell", "notation"),
    [("lstm", "xh"), ("lstm", "layered"), ("gru", "xh"), ("gru", "layered"), ("elman", "aa")],
)
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
def test_the_step_form_at_every_step_equals_the_unrolled_derivation(
    cell: str, notation: str, mode: str
) -> None:
    """The loop body, instantiated at each step, gives the unrolled adjoints and contributions."""
    spec = symbptt.ModelSpec(
        cell=cell,
        notation=notation,
        mode=mode,
        steps=4,
        n_in=3,
        n_hidden=2,
        n_out=3,
        batch=2,
        initial_state="input",
        time_reduction="mean",
    )
    d = symbptt.derive(spec)
    graph = d.graph
    rng = np.random.default_rng(7)
    env: dict[object, object] = {}
    for symbol in [*graph.params.values(), *graph.inputs, *graph.initials.values()]:
        env[symbol] = rng.normal(scale=0.5, size=tuple(int(n) for n in symbol.shape))
    for target in graph.targets:
        raw = rng.random(size=tuple(int(n) for n in target.shape)) + 0.1
        env[target] = raw / raw.sum(
            axis=0 if graph.symbols.layout == "column" else 1, keepdims=True
        )
    evaluate = Evaluator(env)
    evaluate.run(graph.assignments + d.assignments)
    form = d.step_form
    compared = 0
    for step in reversed(graph.steps):
        last = step == graph.steps[-1] and form.last_backward is not None
        body = form.last_backward if last else form.backward
        assert body is not None
        for a in instantiate(tuple(body), form, step, graph):
            value = evaluate(a.expr)
            evaluate.env[a.target] = value  # the loop's own value, for earlier steps
            if a.kind == "contribution":
                expected = evaluate(
                    next(c.expr for c in d.contributions if c.target == a.target)
                    if any(c.target == a.target for c in d.contributions)
                    else sp.ZeroMatrix(*a.target.shape)
                )
                np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-14)
                compared += 1
    assert compared >= len(graph.steps)


def test_the_readme_cell_file_loads_and_derives(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    (block,) = re.findall(r"^```toml\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    path = _write(tmp_path, block, "my_cell.toml")
    spec = symbptt.ModelSpec(cell=str(path), steps=3)
    elman = symbptt.ModelSpec(steps=3)
    mine, reference = symbptt.derive(spec), symbptt.derive(elman)
    assert set(mine.gradients) == set(reference.gradients)


def test_derivation_symbols_by_role_and_by_name() -> None:
    d = symbptt.derive(symbptt.ModelSpec(cell="lstm", steps=2, initial_state="input"))
    assert set(d.named) == set(d.gradients)
    assert d.named["W_hf"] is d.symbols["W_hf"]  # a gated cell's role is its key
    elman = symbptt.derive(symbptt.ModelSpec(steps=2))
    assert elman.named["W_hh"] is elman.symbols["recurrent_weight"]


# -- a cell as a Python object ------------------------------------------------------
def _example_mapping(name: str) -> dict[str, Any]:
    path = Path(__file__).resolve().parent.parent / "examples" / name
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_a_mapping_is_the_same_cell_as_its_file() -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "gru_pytorch.toml"
    from_file = load_cell(str(path))
    from_mapping = cell_from_mapping(_example_mapping("gru_pytorch.toml"))

    def equations(cell: Any) -> list[tuple[str, str, Any]]:
        return [(eq.target, eq.text, eq.reads) for eq in cell.equations]  # not the file's lines

    assert equations(from_mapping) == equations(from_file)
    assert from_mapping.parameters == from_file.parameters
    assert from_mapping.as_mapping() == from_file.as_mapping()
    sizes = {"steps": 3, "n_in": 2, "n_hidden": 2, "n_out": 2, "batch": 1}
    by_file = symbptt.derive(ModelSpec(cell=str(path), **sizes))
    by_object = symbptt.derive(ModelSpec(cell=from_mapping, **sizes))
    assert by_file.gradients == by_object.gradients


def test_a_spec_holding_a_cell_object_round_trips_and_hashes_its_definition() -> None:
    mapping = _example_mapping("lstm_peephole.toml")
    spec = ModelSpec(cell=mapping, steps=2)
    assert spec == ModelSpec(cell=cell_from_mapping(mapping), steps=2)
    assert ModelSpec(**spec.as_dict()) == spec
    changed = {**mapping, "description": mapping["description"] + " (changed)"}
    assert ModelSpec(cell=changed, steps=2).hash() != spec.hash()
    module = symbptt.load_module(symbptt.emit_numpy(spec))
    assert ModelSpec(**module.SPEC) == spec


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"name": object()}, "cell mapping: name is a object; expected a string"),
        ({"name": "c", "states": {1: "n_hidden"}}, "cell mapping: states has the key 1"),
        ({"name": "c"}, "cell mapping: the key 'description' is missing"),
        ("lstm.toml text", None),
    ],
)
def test_a_bad_mapping_is_one_error_naming_the_key(mapping: Any, message: str | None) -> None:
    with pytest.raises(SpecError) as err:
        cell_from_mapping(mapping)
    assert str(err.value).startswith(message or "cell mapping: got str; expected a mapping")


def test_a_tiny_constant_of_a_cell_stays_itself(tmp_path: Path) -> None:
    """sympy.nsimplify reads 1e-300 as 0: the cell's term (and the gradient of W_hh) was
    dropped without a word; the number is its exact decimal."""
    text = GRU_CELL.replace("W_hh @ (r[t] * h[t-1])", "1e-300 * W_hh @ (r[t] * h[t-1])", 1)
    d = symbptt.derive(symbptt.ModelSpec(cell=str(_write(tmp_path, text)), steps=2))
    assert sp.Rational(1, 10**300) in d.gradients["W_hh"].atoms(sp.Rational)
