"""The NumPy backend: a gradient module's text, rolled (any T) or unrolled (fixed T).

The templates (``templates/gradients.py.jinja``, ``gradients_unrolled.py.jinja``
and the shared ``_gradients_api.py.jinja``) lay the module out; every
expression arrives printed here, from the derivation: the function bodies by
:class:`~symbptt.codegen.numpy_rolled.RolledModule` or
:class:`~symbptt.codegen.numpy_unrolled.UnrolledModule`, the docstring's
equations by :func:`equations`.  What the module's API needs to know about the
cell (its parameters and their shapes, its states and their sizes) comes from
the cell and the notation, never from a recognised shape.

Emission derives with symbolic sizes (so that ``b 1^T``, ``X 1`` and
``1 1^T X`` stay distinguishable) and with the initial states as inputs
(every module accepts them and can return their gradients); the spec's
concrete sizes become run-time checks.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import sympy as sp

from ..core.derive import Derivation, derive
from ..core.graph import T_SYMBOL, Symbols, build_graph
from ..expr import functions
from ..model.notation import Notation
from ..model.spec import ModelSpec
from ..model.spec_flags import preset_of, regenerate_command
from ..templating import render
from .array_api_printer import ArrayApiPrinter, ArrayApiRolledModule, array_api_helper_source
from .jax_printer import JaxPrinter, jax_helper_source
from .jax_rolled import JaxRolledModule
from .lines import SharedPrinter, fit_lines
from .module_parts import size_names
from .names import require_distinct_names
from .numpy_composed import ComposedRolledModule, five_step_graph, rolled_steps
from .numpy_printer import NumPyPrinter, helper_source
from .numpy_rolled import RolledModule
from .numpy_unrolled import UnrolledModule, initial_arguments
from .torch_printer import TorchPrinter, torch_helper_source

__all__ = [
    "ARRAY_API_BACKENDS",
    "emission_derivation",
    "emit_array_api",
    "emit_jax",
    "emit_numpy",
    "emit_torch",
    "equations",
]

#: The backends whose module is the array API module (``gradients_array_api.py.jinja``):
#: the same printed code, "cupy"'s refusing arrays of any other namespace.
ARRAY_API_BACKENDS = ("array_api", "cupy")


def emission_derivation(source: ModelSpec | Derivation) -> tuple[ModelSpec, Derivation]:
    """The user's spec and a derivation with symbolic sizes and the initial states as inputs."""
    spec = source.spec if isinstance(source, Derivation) else source
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a ModelSpec or a Derivation, got {type(source).__name__}")
    emission = dataclasses.replace(
        spec, n_in=None, n_hidden=None, n_out=None, batch=None, initial_state="input"
    )
    if (
        isinstance(source, Derivation)
        and source.spec == emission
        and len(source.graph.initial_inputs) == len(source.graph.initials)
    ):
        return spec, source
    if len(emission.initial_inputs) == len(spec.model.states):
        return spec, derive(emission)
    # every state an input inside the code; its API leaves out a state the cell file
    # pins at zero (no keyword, no gradient: :func:`_api`)
    return spec, derive(build_graph(emission, initial_override="input"))


# ---------------------------------------------------------------------------- docstring
def _base(symbol: Any, step: Any) -> str:
    suffix = "_" + Symbols.step_name(step)
    return str(symbol.name)[: -len(suffix)]


def _doc_names(symbols: Symbols, notation: Notation, t: Any) -> dict[Any, str]:
    """Per-step symbols in the notation's index style: ``h_(t-1)``, ``h^(t)``, ``a(t)``."""
    names: dict[Any, str] = dict(size_names(symbols))
    names.update({symbol: name for name, symbol in symbols.params.items()})
    for symbol, (_, step) in symbols.meta.items():
        if not (isinstance(step, sp.Basic) and step.free_symbols):
            continue
        base = _base(symbol, step)
        index = str(step).replace(" ", "")
        if notation.style == "sup":
            names[symbol] = f"{base}^({index})"
        elif notation.style == "call":
            names[symbol] = f"{base}({index})"
        else:
            names[symbol] = f"{base}_{index}" if index == str(t) else f"{base}_({index})"
    return names


def equations(
    spec: ModelSpec, d: Derivation, printer_class: type[NumPyPrinter] = NumPyPrinter
) -> list[str]:
    """The model's equations in the notation's own layout, as docstring lines."""
    sf = d.step_form
    notation = d.notation
    names = _doc_names(sf.symbols, notation, sf.t)
    printer = printer_class(names)
    statements = list(sf.last_forward or sf.forward)
    lines = []
    for a in statements:
        target = printer.doprint(a.target)
        if a.kind == "loss":
            pred = sp.Symbol(printer.doprint(a.expr.pred))
            truth = sp.Symbol(printer.doprint(a.expr.target))
            loss = functions.LOSSES[spec.loss].definition.xreplace(
                {functions.a: pred, functions.y: truth}
            )
            lines.append(f"{target} = sum over units and examples of {sp.sstr(loss)}")
        else:
            lines.append(f"{target} = {printer.doprint(a.expr)}")
    steps = T_SYMBOL if spec.mode == "many_to_many" else sp.Integer(1)
    scale = sf.symbols.loss_scale(steps)
    total = sp.Symbol("_total")
    loss_t = printer.doprint(next(a.target for a in statements if a.kind == "loss"))
    what = f"sum over t of {loss_t}" if spec.mode == "many_to_many" else f"{loss_t} of the last t"
    total_code = printer_class({total: f"({what})", **names}).doprint(scale * total)
    lines.append(f"{notation.loss_ascii} = {total_code}")
    return lines


def _relative_names(symbols: Symbols, notation: Notation, ref: int) -> dict[Any, str]:
    """Step-``k`` symbols named relative to step ``ref`` = t: ``h_1f_(t-1)``, ``mask_t``."""
    names: dict[Any, str] = dict(size_names(symbols))
    names.update({symbol: name for name, symbol in symbols.params.items()})
    t = sp.Symbol("t")
    for symbol, (_, step) in symbols.meta.items():
        if not isinstance(step, (int, sp.Integer)) or abs(int(step) - ref) > 1:
            continue
        base = _base(symbol, step)
        index = str(t + int(step) - ref).replace(" ", "")
        if notation.style == "sup":
            names[symbol] = f"{base}^({index})"
        elif notation.style == "call":
            names[symbol] = f"{base}({index})"
        else:
            names[symbol] = f"{base}_{index}" if index == "t" else f"{base}_({index})"
    return names


def _composed_equations(
    spec: ModelSpec, d: Derivation, printer_class: type[NumPyPrinter] = NumPyPrinter
) -> list[str]:
    """A composed model's equations: each unit's at a step t, then the output layer's.

    Printed from the unrolled graph's own assignments at one step inside the
    sequence (t - 1 or, for a backward unit, t + 1 is a step, not the initial
    state, when T > 2), named relative to it.
    """
    graph = d.graph
    symbols = graph.symbols
    steps = graph.steps
    lines: list[str] = []
    for registry in symbols.registries:
        unit = registry.unit
        assert unit is not None
        inner = steps[1:-1] or steps
        ref = inner[0] if unit.direction == "forward" else inner[-1]
        printer = printer_class(_relative_names(symbols, d.notation, ref))
        where = "t = 1..T" if unit.direction == "forward" else "t = T..1"
        lines.append(f"Layer {unit.layer}, {unit.direction} ({where}):")
        for a in graph.assignments:
            if a.step == ref and symbols.owner.get(a.target) is registry:
                lines.append(f"    {printer.doprint(a.target)} = {printer.doprint(a.expr)}")
    ref = steps[-1]
    printer = printer_class(_relative_names(symbols, d.notation, ref))
    lines.append(
        "Output layer (at every step):" if spec.mode == "many_to_many" else "Output layer:"
    )
    for a in graph.assignments:
        if a.step != ref or a.target in symbols.owner or a.kind == "total_loss":
            continue
        target = printer.doprint(a.target)
        if a.kind == "loss":
            pred = sp.Symbol(printer.doprint(a.expr.pred))
            truth = sp.Symbol(printer.doprint(a.expr.target))
            loss = functions.LOSSES[spec.loss].definition.xreplace(
                {functions.a: pred, functions.y: truth}
            )
            weighted = " times its weight" if len(a.expr.args) > 6 else ""
            lines.append(f"    {target} = sum over units and examples of {sp.sstr(loss)}{weighted}")
        else:
            lines.append(f"    {target} = {printer.doprint(a.expr)}")
    if spec.masked and spec.mode == "many_to_many":
        weight = {
            "mean": "mask_t / (each example's number of real steps)",
        }.get(spec.time_reduction, "mask_t")
        if spec.batch_reduction == "tokens":
            weight = "mask_t / (the number of real (step, example) pairs)"
        lines.append(f"    (the weight of example j at step t: {weight})")
    total = next(a for a in graph.assignments if a.kind == "total_loss")
    printer = printer_class({**size_names(symbols), total.target: str(total.target)})
    loss_t = "L_t"
    many = spec.mode == "many_to_many"
    scale = total.expr / sp.Add(*[a.target for a in graph.assignments if a.kind == "loss"])
    what = f"sum over t of {loss_t}" if many else f"{loss_t} of the last t"
    total_code = printer_class({sp.Symbol("_total"): f"({what})", **size_names(symbols)}).doprint(
        sp.simplify(scale) * sp.Symbol("_total")
    )
    lines.append(f"{d.notation.loss_ascii} = {total_code}")
    return lines


def _article(title: str) -> str:
    """``a`` or ``an`` before ``title`` (an acronym is read letter by letter: an LSTM)."""
    first = title.split()[0] if title.split() else title
    if first[:1] in "AEIOUaeiou":
        return "an"
    if len(first) > 1 and first.isupper() and first[0] in "FHLMNRSX":
        return "an"
    return "a"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


# ---------------------------------------------------------------------------- the API
def _api(d: Derivation) -> dict[str, Any]:
    """What the module's API needs: parameters, shapes, fan-ins, states and their sizes."""
    symbols = d.graph.symbols
    cell = symbols.cell
    notation = d.notation
    size_code = size_names(symbols)
    printer = NumPyPrinter(size_code)

    def code(dim: Any) -> str:
        return str(printer.doprint(dim))

    init = []
    sources: dict[str, tuple[str, int]] = {}
    for name, symbol in symbols.params.items():
        key = symbols.key_of_param(name)
        shape = f"({code(symbol.shape[0])}, {code(symbol.shape[1])})"
        if key == "b_out" or (key != "W_out" and cell.parameter(key).kind == "bias"):
            fan_in: str | None = None
        elif symbols.registries:  # a composed model: the columns of the column-layout shape
            per_unit = key != "W_out" and cell.parameter(key).per_unit
            column = symbol.shape if notation.layout == "column" or per_unit else symbol.shape[::-1]
            fan_in = code(column[1])
        elif key == "W_out":
            fan_in = cell.quantity(cell.readout).size
        else:
            fan_in = str(cell.parameter(key).shape[1])
        init.append({"name": name, "shape": shape, "fan_in": fan_in})
        for axis, dim in enumerate(symbol.shape):
            size = size_code.get(dim)
            if size in ("n_hidden", "n_out") and size not in sources:
                sources[size] = (name, axis)
    fallbacks: dict[str, str] = {}
    names = initial_arguments(d.graph)
    units = _state_units(d)
    arguments = {size: names[key] for key, (size, _) in reversed(units.items())}
    for size in ("n_hidden", "n_out"):
        if size not in sources:
            fallbacks[size] = arguments.get(size, "")
    states = []
    for key, (size, entry) in units.items():
        pinned = cell.quantity(entry.key).initial
        if size == "n_in":
            zeros_size = "X.shape[2]"
        elif size in sources:
            name, axis = sources[size]
            zeros_size = f'params["{name}"].shape[{axis}]'
        elif fallbacks.get(size) and fallbacks[size] != names[key]:
            other = fallbacks[size]  # no parameter fixes it: another state does
            zeros_size = f'SIZES["{size}"] if {other} is None else {other}.shape[-1]'
        else:  # nothing else fixes it: the spec does (checked by _check)
            zeros_size = f'SIZES["{size}"]'
        states.append(
            {
                "key": key,
                "argument": names[key],
                "size": size,
                "size_code": zeros_size,
                "initial": entry.initial,
                "description": entry.description,
                # a state the cell file pins at zero: no keyword, no gradient
                "input": pinned != "zero",
            }
        )
    return {"init": init, "size_sources": sources, "size_fallbacks": fallbacks, "states": states}


def _state_units(d: Derivation) -> dict[str, tuple[str, Any]]:
    """Each initial state's key (``h``; a composed model's ``h_1f``): (its size, its names).

    A unit of a layer above the first reads hidden states, so its ``n_in`` is ``n_hidden``.
    """
    symbols = d.graph.symbols
    cell = symbols.cell
    if not symbols.registries:
        return {s.key: (s.size, d.notation.name_of(s.key)) for s in cell.states}
    out: dict[str, tuple[str, Any]] = {}
    for registry in symbols.registries:
        unit = registry.unit
        assert unit is not None
        for state in cell.states:
            size = "n_hidden" if unit.reads and state.size == "n_in" else state.size
            out[unit.name(state.key)] = (size, registry.notation.name_of(state.key))
    return out


def _context(
    spec: ModelSpec, d: Derivation, unrolled: bool, backend: str = "numpy"
) -> dict[str, Any]:
    """What the templates lay out; ``backend`` "torch" prints for torch (TorchPrinter),
    "jax" for JAX (JaxPrinter; the rolled schedule functional: JaxRolledModule), "cupy" and
    "array_api" for the namespace xp (ArrayApiPrinter, ArrayApiRolledModule)."""
    notation = d.notation
    cell = d.graph.symbols.cell
    torch = backend == "torch"
    jax = backend == "jax"
    array_api = backend in ARRAY_API_BACKENDS
    printer = {"torch": TorchPrinter, "jax": JaxPrinter}.get(backend, SharedPrinter)
    if array_api:
        printer = ArrayApiPrinter
    composed_rolled = not unrolled and not spec.program.plain
    builder: RolledModule | UnrolledModule | ComposedRolledModule
    if unrolled:
        builder = UnrolledModule(spec, d, printer)
    elif composed_rolled:
        _, five = emission_derivation(dataclasses.replace(spec, steps=rolled_steps))
        graph = five_step_graph(five.graph)  # a mean without a mask: 1 / T, not 1 / 5
        builder = ComposedRolledModule(
            spec, five if graph is five.graph else derive(graph), printer
        )
    elif jax:
        builder = JaxRolledModule(spec, d)
    elif array_api:
        builder = ArrayApiRolledModule(spec, d)
    else:
        builder = RolledModule(spec, d, printer=printer)
    built = builder.build()
    helpers = set(builder.helpers)
    kernels = [{**built, "suffix": "", "what": ""}]
    fused_width = fused_size = ""
    # XLA fuses on its own; the array API has no out= to write the fused blocks with
    if not unrolled and not composed_rolled and not jax and not array_api:
        fused = RolledModule(spec, d, fuse=True, printer=printer)
        if fused.s.groups:
            fused_built = fused.build()
            for key in ("prediction", "finals"):
                if fused_built[key] != built[key]:
                    raise AssertionError(f"the fused schedule's {key} differs from the plain one's")
            kernels.append({**fused_built, "suffix": "_fused", "what": " of the fused schedule"})
            helpers |= fused.helpers
            fused_size, fused_width = _group_width(fused, d)
    symbols = d.graph.symbols
    api = _api(d)
    states = api["states"]
    roles = {name: role for name, role in d.roles.items() if name in symbols.params}
    many_to_one = spec.mode == "many_to_one"
    column = notation.layout == "column"
    finals = built["finals"]
    composed = spec.composed  # layers, directions, a mask, or batch_reduction="tokens"
    item = printer({}).item
    if composed_rolled:
        final_states = {
            key: item(f'cache["{name}"]', str(index)) for key, (name, index) in finals.items()
        }
        name = built["prediction"]
        prediction = item(f'cache["{name}"]', "-2" if many_to_one else "1:-1")
    elif unrolled:
        final_states = {key: f'cache["{name}"]' for key, name in finals.items()}
        if many_to_one:
            prediction = f'cache["{built["prediction"]}"]'
        else:
            stack = {"torch": "torch.stack", "jax": "jnp.stack"}.get(backend, "np.stack")
            stack = "xp.stack" if array_api else stack
            prediction = f"{stack}([cache[name] for name in _PREDICTIONS])"
    else:
        final_states = {key: item(f'cache["{name}"]', "-1") for key, name in finals.items()}
        name = built["prediction"]
        prediction = (
            f'cache["{name}"]'
            if many_to_one
            else printer({}).reshape(f'cache["{name}"]', "X.shape[0], X.shape[1], -1")
        )
    steps_text = ", ".join(str(s) for s in notation.steps(2)) + ", ...,"
    first = notation.t0
    last = "T" if first == 1 else "T - 1"
    title = (
        f"Gradients of {_article(cell.title)} {cell.title} by backpropagation through time, "
        + (
            f"unrolled for T = {spec.steps} steps."
            if unrolled
            else "rolled: any number of steps T."
        )
    )
    preset = preset_of(spec)
    where = f" (the preset {preset}: generated/{preset}/)" if preset else ""
    header = [
        "Generated by symbptt from SPEC below: do not edit.",
        f"Regenerate: {regenerate_command(spec, unrolled=unrolled, backend=backend)}{where}",
        (
            f"or in Python: symbptt.emit(symbptt.ModelSpec(**SPEC), backend={backend!r}"
            f"{', unrolled=True' if unrolled else ''})."
            if torch or jax or array_api
            else f"or in Python: symbptt.emit_numpy(symbptt.ModelSpec(**SPEC)"
            f"{', unrolled=True' if unrolled else ''})."
        ),
        f"Model: {notation.title}; seed {notation.seed}."
        if notation.seed and preset
        else f"Model: {notation.title}.",
        f"Spec hash {spec.hash()}; SymPy {sp.__version__}.",
    ]
    data_shape = "(T, m, n_out)" if not many_to_one else "(m, n_out)"
    layout = (
        [
            "Layout: column vectors, as in W x: a per-step quantity is (units, m); inside,",
            "the code works on transposed views, one example per row: X[t] is x_t^T and",
            "W x + b appears as x @ W.T + b.T.",
        ]
        if column
        else ["Layout: rows, as in X W: a per-step quantity is (m, units), one example per row."]
    )
    # The fused output gradient (e.g. softmax - Y for cross-entropy) was derived
    # with the targets summing to one over the units: the module checks it.
    distribution = functions.LOSSES[spec.loss].distribution
    targets_rule = (
        [
            f"Targets: {spec.loss} needs each target to sum to 1 over the n_out units",
            "(one-hot or probabilities; Y.sum(axis=-1) == 1): the gradient is derived",
            "under that rule, and other targets raise ValueError.",
        ]
        if distribution
        else []
    )
    everything = [s["argument"] for s in states]  # the code's own positional arguments
    arguments = [s["argument"] for s in states if s["input"]]  # the caller's keywords
    masks = ["mask"] if spec.masked else []
    initials = [s["initial"] for s in states if s["input"]]
    several = len(arguments) > 1
    zeros = [s["initial"] for s in states if not s["input"]]  # the cell file pins them
    initial_line = (
        f"{_join(initials)} the initial state{'s' if several else ''} {_join(arguments)}"
        if initials != arguments
        else f"{_join(arguments)} the initial state{'s' if several else ''}"
    )
    if zeros:
        zero_text = f"{_join(zeros)} = 0 (the cell file)"
        initial_line = f"{initial_line}; {zero_text}" if arguments else zero_text
    initial_line += "):"
    state_shapes = [f"{s['argument']} (m, {s['size']})" for s in states if s["input"]]
    finals_text = _join([s["description"] for s in states])
    gradient_keys = ", ".join(
        [
            "state['dX']",
            *(f"state['d{a}']" for a in arguments),
            *(f"state['{s['key']}_T']" for s in states),
        ]
    )
    docstring = [
        f"Equations (@ the matrix product, * elementwise; t = {steps_text} {last},",
        initial_line,
        *(
            "    " + line
            for line in (
                _composed_equations(spec, d, printer)
                if symbols.registries
                else equations(spec, d, printer)
            )
        ),
        "",
        "Shapes: X (T, m, n_in) time-major (X[t] holds step t), one example per row;",
        f"Y {data_shape}; {_join(state_shapes)} or None for zeros; the parameters",
        *(f"    {p['name']} {p['shape']}" for p in api["init"]),
        "(biases are n x 1 vectors, as in the notation).",
        *layout,
        f"Reductions: {spec.time_reduction} over time, {spec.batch_reduction} over the batch.",
        *targets_rule,
        *(_composition_doc(spec) if composed else []),
        "",
        "Functions: init_params, forward, loss, loss_and_gradients (the loss and the",
        f"parameter gradients), loss_and_all_gradients (also the gradients of X and "
        f"{_join(arguments)}",
        f"and the final {finals_text}: {gradient_keys}).",
        "float32 in, float32 out; bad shapes, dtypes, parameters or values (NaN, infinity)",
        "raise ValueError; check=False skips that validation, for speed.",
    ]
    if composed_rolled:
        docstring += [
            "",
            "Schedule: one loop over the steps per unit (layer by layer; a backward unit",
            "from T down to 1), then the output layer; the backward pass the other way",
            "round.  Each iteration runs the derivation's assignments of a generic step t,",
            "not hoisted; every per-step quantity is an array q[0..T+1], step t at index t.",
        ]
    elif not unrolled:
        docstring += [
            "",
            "Schedule: what does not depend on the recurrence runs once over all steps",
            "(input projections, output layer, loss gradient, weight gradients); the loops",
            *(
                [
                    "hold what the states carry from step to step.  A call's scratch tensors",
                    "serve the next call of the same shapes once nothing reads them (autograd",
                    "keeps them until it frees the call's node); clear_workspace() frees them.",
                ]
                if torch
                else [
                    "hold what the states carry from step to step, as Python loops over t that",
                    "jax.jit traces into straight-line XLA code (one compilation per shape).",
                ]
                if jax
                else [
                    "hold what the states carry from step to step, as Python loops over t; a",
                    "statement makes one new array and updates it in place (no out= in the",
                    "standard).",
                ]
                if array_api
                else [
                    "hold what the states carry from step to step.  loss_and_gradients keeps its",
                    "scratch arrays between calls (per thread); clear_workspace() frees them.",
                ]
            ),
        ]
    else:
        docstring += [
            "",
            f"Straight-line code for T = {spec.steps} steps (X.shape[0] must be {spec.steps}).",
        ]
    if torch:
        docstring += [
            "",
            "PyTorch: every argument is a torch tensor, of one dtype, on one device (CPU or CUDA).",
            "loss() is differentiable: BPTT is a torch.autograd.Function whose backward is the",
            "generated code above (not autograd's); Model is an nn.Module holding the",
            "parameters, Model(n_in, n_hidden, n_out)(X, Y) the loss, for a training loop.",
        ]
    if jax:
        docstring += [
            "",
            "JAX: every argument is a jax array, of one dtype (float64 needs",
            'jax.config.update("jax_enable_x64", True)).  loss() is differentiable: a',
            "jax.custom_vjp function whose backward is the generated code above (not JAX's",
            "autodiff), so jax.grad of a bigger program uses it; every function works under",
            "jax.jit, and loss_and_gradients is compiled with it.",
        ]
    if array_api:
        docstring += ["", *_array_api_doc(backend)]
    docstring = _wrap(docstring)
    spec_items = {
        key: repr(value) if not isinstance(value, str) else f'"{value}"'
        for key, value in spec.as_dict().items()
    }
    return {
        **built,
        "kernels": kernels,
        "fused_width": fused_width,
        "fused_size": fused_size,
        "fused_step_size": TORCH_FUSED_STEP_SIZE if torch else FUSED_STEP_SIZE,
        "helpers": [
            {
                "torch": torch_helper_source,
                "jax": jax_helper_source,
                **dict.fromkeys(ARRAY_API_BACKENDS, array_api_helper_source),
            }.get(backend, helper_source)(name)
            for name in sorted(helpers)
        ],
        "title": title,
        "header": header,
        "docstring": docstring,
        "parameters": list(symbols.params),
        "roles": roles,
        "layout": notation.layout,
        "steps": spec.steps if unrolled else None,
        "sizes": {
            "n_in": spec.n_in,
            "n_hidden": spec.n_hidden,
            "n_out": spec.n_out,
            "m": spec.batch,
        },
        "spec": spec_items,
        "init": api["init"],
        "size_sources": api["size_sources"],
        "states": states,
        "states_tuple": _tuple([s["key"] for s in states]),
        "readout": cell.readout,
        "initial_args": arguments,
        "initial_keywords": ", ".join(f"{a}=None" for a in [*masks, *arguments]),
        "initial_call": ", ".join([*masks, *everything]),
        "initial_pass": ", ".join([*masks, *arguments]),
        # what a public function passes on: None for a state that starts at zero
        "initial_entry": ", ".join(
            [*masks, *(s["argument"] if s["input"] else "None" for s in states)]
        ),
        "masked": spec.masked,
        "composed": composed,
        "integer_labels": composed and spec.loss == "cross_entropy",
        "label_shape": "(m,)" if many_to_one else "(T, m)",
        "label_mask": spec.masked and not many_to_one,
        "n_out_code": _n_out_code(api),
        "initial_text": _join(arguments),
        "size_fallbacks": api["size_fallbacks"],
        "all_gradients_doc": _all_gradients_doc(states),
        "prediction": prediction,
        "prediction_shape": "(T, m, n_out), time-major" if not many_to_one else "(m, n_out)",
        "final_states": final_states,
        "target_shape": data_shape,
        "targets_are_distributions": distribution,
        "workspace": not unrolled,
        "backend": backend,
        "stacked_predictions": built.get("predictions", []) if not many_to_one else [],
    }


def _array_api_doc(backend: str) -> list[str]:
    """What the array API module's docstring adds: the namespace, and CuPy's module's rule."""
    if backend == "cupy":
        return [
            "CuPy: every argument is a cupy array, of one dtype, on one GPU.  The code is",
            "written against the Python array API standard, in the namespace of the",
            "arguments (array_api_compat.array_namespace): symbptt.emit(spec,",
            'backend="array_api") prints the same functions for any namespace, and its',
            "tests run them on array_api_strict; arrays of another namespace are refused.",
        ]
    return [
        "Array API: the arguments are arrays of any namespace of the Python array API",
        "standard (NumPy, CuPy, array_api_strict, ...; array_api_compat.array_namespace),",
        "all of one namespace, dtype and device; the code calls only the standard's",
        "functions, in that namespace.",
    ]


def _composition_doc(spec: ModelSpec) -> list[str]:
    """What a composed module's docstring adds: layers, directions, the mask, class labels."""
    many_to_one = spec.mode == "many_to_one"
    lines = []
    if spec.layers > 1 or spec.direction == "bidirectional":
        lines.append(
            f"Composition (docs/composition.md): {spec.layers} layer(s), {spec.direction}"
            + (
                "; a backward unit runs t = T..1 and its final state is the one after step 1."
                if spec.direction == "bidirectional"
                else "."
            )
        )
    if spec.batch_reduction == "tokens":
        lines.append(
            "Tokens: the loss is divided by the number of (step, example) pairs with a loss"
            + (" (the real ones)." if spec.masked else ".")
        )
    if spec.masked:
        lines += [
            "Mask: mask (T, m) of 0/1 (bool, integer or float), 1 where an example's step is",
            "real, each example's real steps first, at least one: a padded step carries every",
            "state unchanged and its loss counts zero (its input and target can be anything",
            "finite); the final states are each example's at its last real step.",
        ]
    if spec.loss == "cross_entropy":
        shape = "(m,)" if many_to_one else "(T, m)"
        lines.append(
            f"Y may also be integer class labels {shape} from 0 to n_out - 1"
            + (" (any integer at a padded step)." if spec.masked and not many_to_one else ".")
        )
    return lines


def _n_out_code(api: dict[str, Any]) -> str:
    """The code of n_out in a generated function that has ``params``."""
    if "n_out" in api["size_sources"]:
        name, axis = api["size_sources"]["n_out"]
        return f'params["{name}"].shape[{axis}]'
    return 'SIZES["n_out"]'


def _all_gradients_doc(states: list[dict[str, Any]]) -> list[str]:
    """The docstring of ``loss_and_all_gradients``: what ``state`` holds."""
    parts = ['``state["dX"]`` is the gradient with respect to X (T, m, n_in)']
    for s in states:
        argument, size = s["argument"], s["size"]
        if not s["input"]:
            continue
        parts.append(
            f'``state["d{argument}"]`` the gradient with respect to {argument} (m, {size})'
        )
    parts += [
        f'``state["{s["key"]}_T"]`` the final {s["description"]} (m, {s["size"]})' for s in states
    ]
    arguments = _join([s["argument"] for s in states if s["input"]])
    text = (
        ", ".join(parts[:-1]) + " and " + parts[-1] + f", to pass as {arguments} to the next chunk."
    )
    return textwrap.wrap(text, width=80, break_on_hyphens=False, break_long_words=False)


def _tuple(words: list[str]) -> str:
    """A tuple of strings as ruff formats it on one line: ``("h",)``, ``("h", "c")``."""
    inner = ", ".join(f'"{w}"' for w in words)
    return f"({inner},)" if len(words) == 1 else f"({inner})"


#: The fused schedule runs for steps of at most this many entries (m times the units of a
#: fused block): there the number of NumPy calls decides; above it, memory traffic and the
#: shapes BLAS is fastest at (many small products beat one wide one for m of 4 to 8 here).
FUSED_STEP_SIZE = 256


#: torch's: a torch call costs several times a NumPy call (dispatch, autograd's checks), so
#: fewer calls win at every size measured (benchmarks/peers.py, LSTM on one CPU thread: the
#: fused schedule 0.84 of torch autograd's time against 1.11 for the plain one at the
#: smallest size, 1.09 against 1.18 at (50, 32, 64, 128, 64)): the fused schedule always.
TORCH_FUSED_STEP_SIZE = 2**62


def _group_width(fused: RolledModule, d: Derivation) -> tuple[str, str]:
    """The size name of the fused blocks' units and the code of its value in ``_kernel``."""
    symbols = d.graph.symbols
    widths = {group.width for group in fused.s.groups.values()}
    names = {v: k for k, v in symbols.sizes.items()}
    size = names.get(max(widths, key=str), "") if widths else ""
    if size == "n_in":
        return "n_in", "X.shape[2]"
    sources = _api(d)["size_sources"]
    if size not in sources:
        return "", ""
    name, axis = sources[size]
    return size, f'params["{name}"].shape[{axis}]'


def _wrap(lines: list[str], width: int = 88) -> list[str]:
    """Docstring lines no longer than ``width`` (long ones broken at spaces, indent kept)."""
    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split(" ")
        current = ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if len(candidate) > width and current.strip():
                out.append(current)
                current = indent + "    " + word if indent else word
            else:
                current = candidate
        out.append(current)
    return out


def emit_torch(spec: ModelSpec | Derivation, unrolled: bool = False) -> str:
    """The source of a PyTorch module computing the loss and gradients of ``spec``.

    The same schedule (rolled: any T) or assignments (unrolled: ``spec.steps``)
    as :func:`emit_numpy`, printed by
    :class:`~symbptt.codegen.torch_printer.TorchPrinter`, with a
    ``torch.autograd.Function`` and an ``nn.Module``
    (``templates/gradients_torch.py.jinja``).
    """
    if not isinstance(unrolled, bool):
        raise TypeError(f"unrolled: expected True or False, got {unrolled!r}")
    user_spec, d = emission_derivation(spec)
    source = fit_lines(
        render("gradients_torch.py.jinja", **_context(user_spec, d, unrolled, "torch"))
    )
    return require_distinct_names(source, "torch")


def emit_jax(spec: ModelSpec | Derivation, unrolled: bool = False) -> str:
    """The source of a JAX module computing the loss and gradients of ``spec``.

    The same schedule (rolled: any T) or assignments (unrolled: ``spec.steps``)
    as :func:`emit_numpy`, printed functionally by
    :class:`~symbptt.codegen.jax_rolled.JaxRolledModule` and
    :class:`~symbptt.codegen.jax_printer.JaxPrinter`, with a ``jax.custom_vjp``
    loss (``templates/gradients_jax.py.jinja``).
    """
    if not isinstance(unrolled, bool):
        raise TypeError(f"unrolled: expected True or False, got {unrolled!r}")
    user_spec, d = emission_derivation(spec)
    source = fit_lines(render("gradients_jax.py.jinja", **_context(user_spec, d, unrolled, "jax")))
    return require_distinct_names(source, "jax")


def emit_numpy(spec: ModelSpec | Derivation, unrolled: bool = False) -> str:
    """The source of a NumPy module computing the loss and gradients of ``spec``.

    ``unrolled=False`` gives the rolled module (any number of steps), ``True``
    straight-line code for ``spec.steps`` steps.  A :class:`Derivation` is
    accepted in place of its spec.  The text is the same for the same spec,
    whatever the hash seed.
    """
    if not isinstance(unrolled, bool):
        raise TypeError(f"unrolled: expected True or False, got {unrolled!r}")
    user_spec, d = emission_derivation(spec)
    template = "gradients_unrolled.py.jinja" if unrolled else "gradients.py.jinja"
    return require_distinct_names(
        fit_lines(render(template, **_context(user_spec, d, unrolled))), "numpy"
    )


def emit_array_api(
    spec: ModelSpec | Derivation, unrolled: bool = False, backend: str = "array_api"
) -> str:
    """The source of an array API module computing the loss and gradients of ``spec``.

    The same schedule (rolled: any T) or assignments (unrolled: ``spec.steps``)
    as :func:`emit_numpy`, printed functionally in the namespace ``xp`` of the
    arguments by :class:`~symbptt.codegen.array_api_printer.ArrayApiRolledModule`
    and :class:`~symbptt.codegen.array_api_printer.ArrayApiPrinter`
    (``templates/gradients_array_api.py.jinja``).  ``backend`` "cupy" gives the
    same code for CuPy arrays only (others are refused), "array_api" for any
    namespace of the standard.
    """
    if not isinstance(unrolled, bool):
        raise TypeError(f"unrolled: expected True or False, got {unrolled!r}")
    if backend not in ARRAY_API_BACKENDS:
        raise ValueError(f"backend: expected one of {ARRAY_API_BACKENDS}, got {backend!r}")
    user_spec, d = emission_derivation(spec)
    context = _context(user_spec, d, unrolled, backend)
    source = fit_lines(render("gradients_array_api.py.jinja", **context))
    return require_distinct_names(source, backend)
