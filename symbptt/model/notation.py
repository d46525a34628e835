"""The four seed notations: the Elman cell's notations, read from its cell file.

A notation is data in a cell file (``symbptt/model/cells/elman.toml`` for these
four); this module names them for the stages that are still written for the
Elman roles (see docs/architecture.md).

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

from . import Name, Notation, load_cell

__all__ = ["NOTATIONS", "PARAM_ROLES", "SERIES_ROLES", "Notation", "Param", "Series"]

Param = Name
Series = Name

#: The Elman cell's notations, by name.
NOTATIONS: dict[str, Notation] = dict(load_cell("elman").notations)

#: Roles of the Elman parameters, in the order documents and code list them.
PARAM_ROLES = ("input_weight", "recurrent_weight", "output_weight", "hidden_bias", "output_bias")
#: Roles of the Elman step-indexed quantities.
SERIES_ROLES = (
    "input",
    "pre_activation",
    "hidden",
    "output_pre_activation",
    "output",
    "target",
)
