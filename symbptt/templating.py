"""The one jinja2 environment factory: templates lay out files, they hold no formula.

Templates live in ``templates/`` at the root of a checkout and are shipped in
the wheel as ``symbptt/templates`` (hatchling ``force-include``); both places
are found the same way.  LaTeX templates (``*.tex.jinja``) use delimiters that
do not clash with TeX: ``((* block *))``, ``((( variable )))``, ``((= comment =))``.
Expressions are printed in Python before ``render()``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

__all__ = ["environment", "render", "templates_dir"]


def templates_dir() -> Path:
    """The templates folder: inside the installed package, else the checkout's root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"symbptt templates not found next to {here}")


@cache
def environment(tex: bool = False) -> jinja2.Environment:
    """The jinja2 environment (strict, whitespace-tidy); ``tex`` selects TeX-safe delimiters."""
    options: dict[str, object] = {
        "loader": jinja2.FileSystemLoader(str(templates_dir())),
        "undefined": jinja2.StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
        "autoescape": False,
    }
    if tex:
        options.update(
            block_start_string="((*",
            block_end_string="*))",
            variable_start_string="(((",
            variable_end_string=")))",
            comment_start_string="((=",
            comment_end_string="=))",
            line_statement_prefix=None,
            line_comment_prefix=None,
        )
    return jinja2.Environment(**options)  # type: ignore[arg-type]


def render(name: str, **context: object) -> str:
    """Render template ``name`` (TeX delimiters for ``*.tex.jinja``)."""
    env = environment(tex=name.endswith(".tex.jinja"))
    return env.get_template(name).render(**context)
