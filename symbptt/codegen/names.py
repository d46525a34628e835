"""The names a generated module gives a cell's parameters, checked against its own names.

A generated module reads each parameter into a local of the parameter's own
name (``W_hh = params["W_hh"]``, in every backend's forward and backward
functions), so that its lines read like the derivation.  The module also has
names of its own: the arguments ``params``, ``X``, ``Y``, ``h0``, the batch size
``m``, the arrays of the schedule (``h_seq``, ``z_all``, ``tmp1``), its helpers
and imports (``np``, ``logsumexp``).  A cell whose parameter is called ``m``
would have the batch size overwrite the weight (or the weight the batch size),
and the module would fail far from the cause, or compute something else.

:func:`require_distinct_names` reads the printed source and refuses it, in one
line naming the parameter and the module's line that takes its name, when in a
function that reads a parameter into its local the name is bound again
(arguments included), is bound again in a function nested in it, is a
module-level name, or is a Python builtin that the function calls (``for t in
range(T)`` beside a parameter ``range``; a parameter is an array, never called).
A function that reads no parameter (``init_params``'s ``scale``, a check's
``message``) keeps its own names.  It reads the source, so it holds for every
backend's printer and template alike.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator

from ..model.spec import SpecError

__all__ = ["require_distinct_names"]

_Scope = ast.FunctionDef | ast.AsyncFunctionDef


def _nested(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes under ``node`` in its own scope (not inside a nested function or class)."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield from _nested(child)


def _bindings(function: _Scope) -> list[tuple[str, ast.AST]]:
    """Each name ``function`` binds in its own scope, with the node that binds it."""
    out: list[tuple[str, ast.AST]] = []
    args = function.args
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
        if arg is not None:
            out.append((arg.arg, function))
    statement: ast.AST = function
    for node in _nested(function):
        if isinstance(node, ast.stmt):
            statement = node
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            if not isinstance(statement, ast.AugAssign):  # ``z += a`` binds nothing new
                out.append((node.id, statement))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(((a.asname or a.name).split(".")[0], node) for a in node.names)
    return out


def _module_names(tree: ast.Module) -> dict[str, ast.AST]:
    """The names bound at the module's top level (imports, functions, constants)."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.setdefault((alias.asname or alias.name).split(".")[0], node)
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.setdefault(sub.id, node)
    return names


#: Python's builtins: a parameter's local of one of these names hides it from its function.
_BUILTINS = frozenset(dir(builtins))


def _call_of(function: _Scope, name: str) -> ast.stmt | None:
    """The innermost statement of ``function`` (nested functions included) that calls
    ``name``, or None."""

    def visit(node: ast.AST, statement: ast.stmt | None) -> ast.stmt | None:
        if isinstance(node, ast.stmt):
            statement = node
        called = node.func if isinstance(node, ast.Call) else None
        if isinstance(called, ast.Name) and called.id == name:
            return statement
        for child in ast.iter_child_nodes(node):
            found = visit(child, statement)
            if found is not None:
                return found
        return None

    return visit(function, None)


def _parameters(tree: ast.Module) -> tuple[str, ...]:
    """The module's ``PARAMETERS``: the parameters' names, as its callers key them."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PARAMETERS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return tuple(str(v) for v in value)
    return ()


def _uses(source: str, node: ast.AST, function: _Scope | None) -> str:
    """Where the module binds the name: an argument of ``function``, or the line binding it
    (in ``function``; at the top level when None)."""
    if function is not None and node is function:
        return f"as an argument of {function.name}()"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        text = f"def {node.name}(...)"
    else:
        segment = ast.get_source_segment(source, node) or ""
        if isinstance(node, (ast.For, ast.While, ast.If, ast.With)):  # its first line
            segment = segment.splitlines()[0]
        text = " ".join(segment.split())
        text = text if len(text) <= 60 else text[:57] + "..."
    where = "at its top level" if function is None else f"in {function.name}()"
    return f"{where}: `{text}`"


def require_distinct_names(source: str, backend: str) -> str:
    """``source`` when no parameter's local takes one of the module's own names, else SpecError.

    The message names the parameter and quotes the line of the module that uses
    its name for something else; the remedy is to rename the parameter in the
    cell file.
    """
    tree = ast.parse(source)
    parameters = set(_parameters(tree))
    if not parameters:
        return source
    module_level = _module_names(tree)
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    for function in functions:
        bound = _bindings(function)
        mine = [name for name, _ in bound if name in parameters]
        for name in dict.fromkeys(mine):
            others = [node for n, node in bound if n == name]
            if not any(_reads_parameter(node, name) for node in others):
                continue  # a function that does not read the parameter keeps its own names
            inner = [
                node
                for sub in ast.walk(function)
                if sub is not function and isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n, node in _bindings(sub)
                if n == name
            ]
            if len(others) > 1:
                clash = next(
                    (node for node in others if not _reads_parameter(node, name)), others[1]
                )
                where = _uses(source, clash, function)
            elif inner:
                where = _uses(source, inner[0], function)
            elif name in module_level:
                where = _uses(source, module_level[name], None)
            elif name in _BUILTINS and (call := _call_of(function, name)) is not None:
                where = "as a Python builtin " + _uses(source, call, function)
            else:
                continue
            raise SpecError(
                f"parameter {name!r}: the generated {backend} module already uses the name "
                f"{name!r} {where}; rename the parameter in the cell file"
            )
    return source


def _reads_parameter(node: ast.AST, name: str) -> bool:
    """Whether ``node`` is the line binding the parameter itself: ``name = params["name"]``."""
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Subscript)
        and isinstance(node.value.slice, ast.Constant)
        and node.value.slice.value == name
    )
