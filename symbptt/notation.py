"""The four notations, one per seed document: names, layout, where t starts.

A notation fixes what a reader of that seed expects to see: the symbols of
the parameters and the step-indexed quantities (their ASCII names, used in
code, SymPy symbol names and the checker's expression language, and their
LaTeX forms), the layout (column vectors ``W x`` or row-major ``X W``), the
first step and the name of the initial state.

=========  =======================================  ======  ====  ================
preset     seed                                     layout  t     equations
=========  =======================================  ======  ====  ================
uvw        000_75cd91ca9d353403.txt                 column  1..T  h = g1(W h + U x + b_h)
xh         001_9533ae6820425de5.txt  (default)      column  1..T  h = f(W_xh x + W_hh h + b_h)
layered    002_8ce72ce757ab2cde.txt                 row     0..T-1  H_1t = f1(X W_1 + H W_h1 + β_1)
aa         003_0e8c7e6dd8507587.txt                 column  1..T  a(t) = f(w_aa a + w_ax x + b_a)
=========  =======================================  ======  ====  ================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

__all__ = ["NOTATIONS", "Notation", "Param", "Series"]

#: Roles of the parameters, in the order documents and code list them.
PARAM_ROLES = ("input_weight", "recurrent_weight", "output_weight", "hidden_bias", "output_bias")
#: Roles of the step-indexed quantities.
SERIES_ROLES = (
    "input",
    "pre_activation",
    "hidden",
    "output_pre_activation",
    "output",
    "target",
)


@dataclass(frozen=True)
class Param:
    role: str
    ascii: str
    latex: str
    description: str


@dataclass(frozen=True)
class Series:
    """A quantity with one value per step: ``base`` with the step index and layer."""

    role: str
    ascii: str
    base: str  # LaTeX of the symbol without its index, e.g. r"\hat{y}"
    description: str
    layer: str = ""  # layered notation: H_{1t} has layer "1"


@dataclass(frozen=True)
class Notation:
    name: str
    seed: str
    title: str
    layout: str  # "column" or "row"
    t0: int
    style: str  # index style: "sub" x_{t}, "sup" x^{(t)}, "call" x(t)
    params: tuple[Param, ...]
    series: tuple[Series, ...]
    loss_ascii: str
    loss_latex: str
    initial_ascii: str
    initial_latex: str
    hidden_fn: str  # LaTeX of the hidden activation's name in the equations
    output_fn: str
    recurrent_first: bool = False  # W h + U x (uvw, aa) rather than W_xh x + W_hh h
    notes: tuple[str, ...] = ()

    # -- look-ups -----------------------------------------------------------------
    def param(self, role: str) -> Param:
        for param in self.params:
            if param.role == role:
                return param
        raise KeyError(role)

    def series_of(self, role: str) -> Series:
        for series in self.series:
            if series.role == role:
                return series
        raise KeyError(role)

    def steps(self, count: int) -> tuple[int, ...]:
        """The step indices of a model with ``count`` steps."""
        return tuple(range(self.t0, self.t0 + count))

    # -- LaTeX --------------------------------------------------------------------
    def index(self, base: str, step: Any, layer: str = "") -> str:
        """``base`` indexed by ``step`` (an int or a SymPy expression such as t - 1)."""
        step_tex = sp.latex(step) if isinstance(step, sp.Basic) else str(step)
        compound = not (isinstance(step, int) or getattr(step, "is_Atom", False))
        if self.style == "sup":
            return f"{base}^{{({step_tex})}}"
        if self.style == "call":
            return rf"{base}\left({step_tex}\right)"
        if layer:
            sep = "," if compound or (isinstance(step, int) and step >= 10) else ""
            return f"{base}_{{{layer}{sep}{step_tex}}}"
        return f"{base}_{{{step_tex}}}"

    def latex_of(self, role: str, step: Any) -> str:
        series = self.series_of(role)
        return self.index(series.base, step, series.layer)

    def delta_latex(self, step: Any) -> str:
        layer = self.series_of("pre_activation").layer
        return self.index(r"\delta", step, layer)

    def loss_latex_at(self, step: Any) -> str:
        return self.index(self.loss_latex, step)


def _series(
    *rows: tuple[str, str, str, str] | tuple[str, str, str, str, str],
) -> tuple[Series, ...]:
    return tuple(Series(*row) for row in rows)


def _params(*rows: tuple[str, str, str, str]) -> tuple[Param, ...]:
    return tuple(Param(*row) for row in rows)


NOTATIONS: dict[str, Notation] = {
    "uvw": Notation(
        name="uvw",
        seed="000_75cd91ca9d353403.txt",
        title="U, V, W notation (h^{(t)}, column vectors)",
        layout="column",
        t0=1,
        style="sup",
        params=_params(
            ("input_weight", "U", "U", "input-to-hidden weights"),
            ("recurrent_weight", "W", "W", "hidden-to-hidden (recurrent) weights"),
            ("output_weight", "V", "V", "hidden-to-output weights"),
            ("hidden_bias", "b_h", "b_h", "hidden bias"),
            ("output_bias", "b_y", "b_y", "output bias"),
        ),
        series=_series(
            ("input", "x", "x", "input"),
            ("pre_activation", "a", "a", "hidden pre-activation"),
            ("hidden", "h", "h", "hidden state"),
            ("output_pre_activation", "o", "o", "output pre-activation"),
            ("output", "y_hat", r"\hat{y}", "prediction"),
            ("target", "y", "y", "target"),
        ),
        loss_ascii="J",
        loss_latex="J",
        initial_ascii="h_0",
        initial_latex="h^{(0)}",
        hidden_fn="g_1",
        output_fn="g_2",
        recurrent_first=True,
    ),
    "xh": Notation(
        name="xh",
        seed="001_9533ae6820425de5.txt",
        title="W_xh, W_hh, W_hy notation (h_t, column vectors)",
        layout="column",
        t0=1,
        style="sub",
        params=_params(
            ("input_weight", "W_xh", "W_{xh}", "input-to-hidden weights"),
            ("recurrent_weight", "W_hh", "W_{hh}", "hidden-to-hidden (recurrent) weights"),
            ("output_weight", "W_hy", "W_{hy}", "hidden-to-output weights"),
            ("hidden_bias", "b_h", "b_h", "hidden bias"),
            ("output_bias", "b_y", "b_y", "output bias"),
        ),
        series=_series(
            ("input", "x", "x", "input"),
            ("pre_activation", "z", "z", "hidden pre-activation"),
            ("hidden", "h", "h", "hidden state"),
            ("output_pre_activation", "o", "o", "output pre-activation"),
            ("output", "y_hat", r"\hat{y}", "prediction"),
            ("target", "y", "y", "target"),
        ),
        loss_ascii="L",
        loss_latex="L",
        initial_ascii="h_0",
        initial_latex="h_0",
        hidden_fn="f",
        output_fn="g",
    ),
    "layered": Notation(
        name="layered",
        seed="002_8ce72ce757ab2cde.txt",
        title="Layered notation (H_{1t}, row-major batches)",
        layout="row",
        t0=0,
        style="sub",
        params=_params(
            ("input_weight", "W_1", "W_1", "input-to-hidden weights of layer L_1"),
            ("recurrent_weight", "W_h1", "W_{h1}", "hidden-to-hidden weights of layer L_1"),
            ("output_weight", "W_2", "W_2", "weights of the output layer L_2"),
            ("hidden_bias", "beta_1", r"\beta_1", "bias of layer L_1"),
            ("output_bias", "beta_2", r"\beta_2", "bias of layer L_2"),
        ),
        series=_series(
            ("input", "X", "X", "input batch"),
            ("pre_activation", "Z1", "Z", "pre-activation of layer L_1", "1"),
            ("hidden", "H1", "H", "hidden state of layer L_1", "1"),
            ("output_pre_activation", "Z2", "Z", "pre-activation of layer L_2", "2"),
            ("output", "Y_hat", r"\hat{Y}", "prediction"),
            ("target", "Y", "Y", "target"),
        ),
        loss_ascii="L",
        loss_latex="L",
        initial_ascii="H_init",
        initial_latex=r"H_{init}",
        hidden_fn="f_1",
        output_fn="f_2",
    ),
    "aa": Notation(
        name="aa",
        seed="003_0e8c7e6dd8507587.txt",
        title="a(t), w_aa notation (column vectors)",
        layout="column",
        t0=1,
        style="call",
        params=_params(
            ("input_weight", "w_ax", "w_{ax}", "input-to-activation weights"),
            ("recurrent_weight", "w_aa", "w_{aa}", "activation-to-activation weights"),
            ("output_weight", "w_ya", "w_{ya}", "activation-to-output weights"),
            ("hidden_bias", "b_a", "b_a", "activation bias"),
            ("output_bias", "b_y", "b_y", "output bias"),
        ),
        series=_series(
            ("input", "x", "x", "input"),
            ("pre_activation", "net_a", r"net_a", "activation pre-activation"),
            ("hidden", "a", "a", "activation (hidden state)"),
            ("output_pre_activation", "net_y", r"net_y", "output pre-activation"),
            ("output", "y", "y", "prediction (this seed calls the prediction y)"),
            ("target", "y_hat", r"\hat{y}", "target (this seed calls the target \\hat{y})"),
        ),
        loss_ascii="L",
        loss_latex="L",
        initial_ascii="a_0",
        initial_latex=r"a\left(0\right)",
        hidden_fn="f",
        output_fn="g",
        recurrent_first=True,
        notes=(
            "As in the seed, y(t) is the prediction and \\hat{y}(t) the target "
            "(the reverse of the other notations).",
        ),
    ),
}
