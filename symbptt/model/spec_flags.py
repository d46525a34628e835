"""The spec's command-line flags, and the command line that regenerates a file.

One table (:data:`SPEC_FLAGS`) says which spec field has which flag and how
it is read; ``symbptt derive`` and ``symbptt check`` build their options from
it (:func:`add_spec_flags`), and :func:`regenerate_command` prints a spec back
as the ``symbptt derive`` command that writes it, reading the flags from a
parser built the same way, so the two cannot drift apart.  Generated code and
documents name that command in their headers.
"""

from __future__ import annotations

import argparse
import shlex
from functools import cache
from typing import Any

from .presets import PRESETS
from .spec import CHOICES, MAX_BATCH, MAX_LAYERS, MAX_SIZE, MAX_STEPS, ModelSpec

__all__ = [
    "REGENERATE_PRESETS",
    "SPEC_FLAGS",
    "SWITCH_FLAGS",
    "add_spec_flags",
    "digits",
    "flag",
    "preset_of",
    "regenerate_command",
]


def digits(flag: str, high: int | None = None) -> Any:
    """An argparse ``type`` for an integer flag: ASCII digits only, with an optional sign.

    ``int()`` would take any Unicode digit (``--steps ٣`` as 3) and thousands
    of digits; the config file's TOML takes neither, and neither does a flag.
    Ranges are checked by :class:`ModelSpec` (spec flags) or by the command.
    """

    def parse(text: str) -> int:
        body = text[1:] if text[:1] in "+-" else text
        if not body or not (body.isascii() and body.isdigit()):
            raise argparse.ArgumentTypeError(
                f"got {text[:40]!r}; expected a whole number written with the digits 0-9"
            )
        if len(body) > _MAX_DIGITS:
            most = f"; expected at most {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"got a number of {len(body)} digits{most}")
        return int(text)

    parse.__name__ = flag  # argparse names the flag's type in its own messages
    return parse


#: Longer integers are refused as text, before ``int()`` reads them.
_MAX_DIGITS = 40


def _default(name: str) -> str:
    value = getattr(ModelSpec(), name)
    return "symbolic, any size" if value is None else str(value).lower()


#: Spec fields that have a flag, and how to read it.  Choices are checked by
#: ModelSpec itself (so activations registered at run time are accepted).
#: ``bias`` is the pair --bias / --no-bias (:func:`add_spec_flags`).
SPEC_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("steps", int, f"number of time steps T, 1 to {MAX_STEPS}"),
    ("cell", str, "recurrent cell: elman, lstm, gru, or a .toml cell file (see `symbptt cells`)"),
    ("hidden", str, "hidden activation: " + ", ".join(CHOICES["hidden"])),
    ("output", str, "output activation: " + ", ".join(CHOICES["output"])),
    ("loss", str, "loss: " + ", ".join(CHOICES["loss"])),
    ("mode", str, "many_to_many (a loss at every step) or many_to_one (at the last)"),
    ("notation", str, "notation preset: " + ", ".join(CHOICES["notation"])),
    ("time_reduction", str, "sum or mean of the per-step losses"),
    ("batch_reduction", str, "mean or sum over the examples of a batch, or tokens"),
    ("initial_state", str, "zero, or input (h0 is an input and gets a gradient)"),
    ("n_in", int, f"input size, 1 to {MAX_SIZE}"),
    ("n_hidden", int, f"hidden size, 1 to {MAX_SIZE}"),
    ("n_out", int, f"output size, 1 to {MAX_SIZE}"),
    ("batch", int, f"batch size m, 1 to {MAX_BATCH}"),
    ("layers", int, f"stacked recurrent layers, 1 to {MAX_LAYERS}"),
)
#: Spec fields set by a switch rather than a value: (option, field, argparse action, help).
#: ``boolean`` is the pair --NAME / --no-NAME; ``store_const`` sets the one other value.
SWITCH_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--bias", "bias", "boolean", "biases b_h, b_y (default: on)"),
    (
        "--bidirectional",
        "direction",
        "store_const",
        "a forward and a backward cell in every layer (default: forward only)",
    ),
    (
        "--masked",
        "masked",
        "boolean",
        "take a (T, m) 0/1 mask of each example's real steps (default: off)",
    ),
)
_LIMITS = {"steps": MAX_STEPS, "n_in": MAX_SIZE, "n_hidden": MAX_SIZE, "n_out": MAX_SIZE}
_LIMITS["batch"] = MAX_BATCH
_LIMITS["layers"] = MAX_LAYERS


def flag(name: str) -> str:
    """The flag of a spec field: ``n_in`` -> ``--n-in``."""
    return "--" + name.replace("_", "-")


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """The spec's flags (and ``--preset``) as one argument group of ``parser``."""
    group = parser.add_argument_group(
        "model spec",
        "Override the config file's fields (lowest precedence first: defaults, "
        "--preset, CONFIG.toml, these flags).",
    )
    group.add_argument(
        "--preset",
        metavar="NAME",
        help="start from one of the seeds' models: " + ", ".join(PRESETS),
    )
    for name, kind, text in SPEC_FLAGS:
        metavar = "N" if kind is int else name.upper().replace("_", "-")
        reader = digits(flag(name), _LIMITS[name]) if kind is int else kind
        help_text = f"{text} (default: {_default(name)})"
        group.add_argument(flag(name), dest=name, type=reader, metavar=metavar, help=help_text)
    for option, dest, action, text in SWITCH_FLAGS:
        if action == "boolean":
            group.add_argument(
                option, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:  # store_const: the one value other than the default
            group.add_argument(
                option, dest=dest, action=action, const="bidirectional", default=None, help=text
            )


# -- the command that regenerates a file ----------------------------------------------
#: The command that rewrites ``generated/`` (every preset's files).
REGENERATE_PRESETS = "python -m symbptt.regenerate"


def preset_of(spec: ModelSpec) -> str | None:
    """The name of the preset ``spec`` is (its files are in ``generated/<name>/``), or None."""
    return next((name for name, preset in sorted(PRESETS.items()) if preset == spec), None)


@cache
def _options() -> dict[str, tuple[str, ...]]:
    """Spec field -> its option strings, read from a parser built by :func:`add_spec_flags`."""
    parser = argparse.ArgumentParser(add_help=False)
    add_spec_flags(parser)
    options = {
        action.dest: tuple(action.option_strings)
        for action in parser._actions  # argparse keeps its actions here, in order
        if action.dest in ModelSpec.field_names()
    }
    missing = [name for name in ModelSpec.field_names() if name not in options]
    if missing:  # a new spec field needs a flag, or no command can regenerate its files
        raise AssertionError(f"spec fields without a flag: {', '.join(missing)}")
    return options


def regenerate_command(
    spec: ModelSpec, unrolled: bool = False, backend: str = "numpy", check: str = ""
) -> str:
    """The command that writes ``spec``'s files again, byte for byte.

    For a preset (:func:`preset_of`), :data:`REGENERATE_PRESETS`, which rewrites
    ``generated/``.  For any other spec, ``symbptt derive`` with a flag for every
    field that differs from ``ModelSpec()``'s default, in the parser's order;
    ``--unrolled`` when the file is the unrolled module; the output folder is
    left as ``DIR``.  Another ``backend`` than numpy adds ``--backend NAME`` (its
    files, ``gradients_<backend>.py`` and ``gradients_<backend>_unrolled.py``, are
    written by ``symbptt derive`` only).  ``check``: the name of the file of formulas
    the documents were written with (``symbptt derive --check FILE``), given again
    as ``--check NAME`` (a preset's documents too: ``generated/`` holds none).
    """
    if preset_of(spec) is not None and backend == "numpy" and not check:
        return REGENERATE_PRESETS
    if not isinstance(spec.cell, str):  # a cell given as a Python object has no file to name
        return "Python: symbptt.ModelSpec(**SPEC), SPEC holding the cell's mapping"
    default = ModelSpec()
    words = ["symbptt", "derive"]
    for name, options in _options().items():
        value = getattr(spec, name)
        if value == getattr(default, name):
            continue
        if isinstance(value, bool):  # --bias / --no-bias, --masked / --no-masked
            words.append(options[0] if value else options[1])
        elif name == "direction":  # --bidirectional: the one other direction
            words.append(options[0])
        else:
            words += [options[0], shlex.quote(str(value))]
    if backend != "numpy":
        words += ["--backend", backend]
    if unrolled:
        words.append("--unrolled")
    if check:
        words += ["--check", shlex.quote(check)]
    words += ["--out", "DIR"]
    return " ".join(words)
