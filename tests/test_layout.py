"""The package's folders show the pipeline, and imports flow one way through them.

expr (the vocabulary) -> model (cells, spec, notations) -> core (graph, rules, reverse mode,
evaluator) -> codegen / documents / checker -> train -> oracle (the proofs and checks that run
the stages above) -> cli.  A stage may import the stages before it, never one after it: the
derivation knows nothing of documents, the documents run no proof, training or code generation
(they print what the verifying stage hands over; they name its result type for annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import symbptt

PACKAGE = Path(symbptt.__file__).parent

# what each stage may import (besides itself); top-level helper modules by their own name.
# The documents also read the package's __version__ for their header.
ALLOWED = {
    "expr": set(),
    "model": {"expr"},
    "core": {"expr", "model"},
    "codegen": {"expr", "model", "core", "templating"},
    "documents": {"expr", "model", "core", "files", "templating", "optimizers"},
    "checker": {"expr", "model", "core", "codegen"},
    "train": {"model", "codegen", "optimizers"},
    "oracle": {"expr", "model", "core", "codegen", "documents", "checker", "train"},
}
# imports made for type annotations only (under `if TYPE_CHECKING:`), which run nothing
ANNOTATION_ONLY = {("documents", "oracle")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "symbptt"


def _imports(path: Path, root: Path = PACKAGE.parent) -> list[tuple[str, bool]]:
    """(absolute module imported, whether only under TYPE_CHECKING) for every import in path."""
    rel = path.relative_to(root).with_suffix("").parts
    package = list(rel[:-1])
    tree = ast.parse(path.read_text("utf-8"))
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and getattr(branch.test, "id", "") == "TYPE_CHECKING"
        for statement in branch.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "symbptt":  # `from .. import name`: the name may be a stage
                found += [(f"symbptt.{a.name}", id(node) in typing_only) for a in node.names]
            elif module.startswith("symbptt."):
                found.append((module, id(node) in typing_only))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in typing_only) for a in node.names]
    return [(m, t) for m, t in found if m.startswith("symbptt.")]


def _wrong_imports(package: Path) -> list[str]:
    wrong = []
    for path in sorted(package.rglob("*.py")):
        stage = _stage(".".join(path.relative_to(package.parent).with_suffix("").parts))
        if stage not in ALLOWED:
            continue  # cli, the package's front door, regenerate: on top of everything
        for module, typing_only in _imports(path, package.parent):
            other = _stage(module)
            if other == stage or (other == "__version__" and stage == "documents"):
                continue
            if other not in ALLOWED[stage] and not (
                typing_only and (stage, other) in ANNOTATION_ONLY
            ):
                wrong.append(f"{path.relative_to(package.parent)} imports {module}")
    return wrong


def test_every_stage_imports_only_the_stages_before_it() -> None:
    wrong = _wrong_imports(PACKAGE)
    assert not wrong, "\n".join(wrong)


def test_nothing_below_the_command_line_imports_it() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if _stage(name) in {"cli", "__main__", "regenerate"}:
            continue
        assert all(_stage(m) != "cli" for m, _ in _imports(path)), name


def test_the_layering_check_finds_a_wrong_import(tmp_path: Path) -> None:
    """Not vacuous: a later stage imported by the derivation, or a proof run by the documents
    outside annotations, is reported; an annotation-only import is not."""
    package = tmp_path / "symbptt"
    for folder, text in {
        "core": "from ..documents import render_documents\n",
        "documents": "from ..oracle.verify import scalar_proof\n",
        "codegen": "if TYPE_CHECKING:\n    from ..oracle import x\n",
    }.items():
        (package / folder).mkdir(parents=True)
        (package / folder / "probe.py").write_text(text)
    assert _wrong_imports(package) == [
        "symbptt/codegen/probe.py imports symbptt.oracle",
        "symbptt/core/probe.py imports symbptt.documents",
        "symbptt/documents/probe.py imports symbptt.oracle.verify",
    ]
