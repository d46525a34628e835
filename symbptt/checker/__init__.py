"""The hand-derivation checker: check a hand-derived BPTT gradient against the derivation.

::

    r = symbptt.check(spec, wrt="W_hy", candidate="sum_t((y_hat[t] - y[t]) @ h[t].T)")
    r.ok           # True or False
    r.explain()    # a short, readable report

Every cell works the same way (the Elman RNN in its four notations, the LSTM,
the GRU, a user's cell file): the names come from the model's symbol registry.

A candidate is one of

* a string in the expression language of :mod:`symbptt.expr.exprlang` over the
  names of the model (:func:`names` lists them; below);
* a SymPy matrix expression in the derivation's symbols (``derive(spec)``:
  parameters, ``graph.symbols.series(key, step)``, the adjoints ``delta_t``,
  ``dc_t``, ``delta_i_t``, ...);
* a Python callable ``f(params, X, Y, **initial_states)`` taking the arrays of
  the generated NumPy module (time-major ``X`` (T, m, n_in), ``Y`` (T, m,
  n_out) or (m, n_out) for many_to_one, ``params`` by ASCII name in the
  notation's shapes with biases (n, 1)) and one keyword per recurrent state,
  its key and ``0`` (``h0``; an LSTM's ``h0`` and ``c0``), each (m, n_hidden)
  or None when the spec's initial state is zero; it returns the gradient of
  ``wrt`` (an initial state's in the notation's shape), or a dict holding it
  under that name, or ``(loss, dict)``.

Verdicts
--------
Expressions are evaluated at ``points`` random instances of the model (sizes
left symbolic in the spec get small distinct values) in 30-digit arithmetic,
with every forward quantity (h, ŷ, ...) and every δ_t computed by the
derivation; the expected value is the derivation's gradient at the same
point.  When the candidate agrees everywhere the checker tries to prove it:
both sides become explicit matrices at those sizes whose entries are
polynomials (over the rationals) in the entries of the parameters, inputs,
targets and forward quantities (and of f(q_t) for a forward quantity q_t, such
as an LSTM's tanh(c_t)), first with the adjoints the correct formula keeps by
name (δ_t) as symbols, then with them expanded (f(z_t) and softmax(o_t) in the
candidate read as h_t and ŷ_t), and they must be the same polynomials; the
report says ``method == "symbolic"`` when that succeeds, else ``"numeric at
N points, 30 digits"`` (the proof gives up on non-polynomial candidates and
past a work budget).  Callables are
compared in float64 (relative tolerance 1e-6) with the generated module (or,
where code generation is not available, with the derivation evaluated in
float64).  A candidate of the wrong shape gets ``method == "shape check"``.

When they differ the report gives a counterexample (the sizes, the numbers,
expected and candidate values), a localisation (which steps' terms differ,
which steps' losses the error involves, which rows and columns differ; with
one-hot targets whether it agrees on the target class's row) and which common
mistake the candidate matches, found by building the mutated correct formulas
and comparing values (never by looking at the text): a transpose, a sign, a
missing 1/T or 1/m factor, a dropped carry of any state, a weight
(un)transposed in one adjoint, one activation's derivative taken at its
argument (1 - z**2) or applied to its output (1 - tanh(h)**2) or missing,
another gate's adjoint, an off-by-one step (h[t] for h[t-1]), only the last step's term, a
dropped softmax + cross-entropy target term (-(1 - y_hat) or
-y * (1 - y_hat) where y_hat - y belongs), or the gradient with respect to
another quantity (∂L/∂y_hat_t instead of ∂L/∂W).  The correct formula is
printed in the same language (``sum_t(delta[t] @ h[t-1].T)``, with the δ
recursion).  A candidate whose shape cannot match is reported with both
shapes.  Malformed text raises :class:`~symbptt.expr.exprlang.ExpressionError`
(shape errors inside the formula included); nothing in it is executed.

Names of the expression language
--------------------------------
Every parameter by its ASCII name in the notation (``W_hh``; ``W_xi``, ...);
every initial state by its name (``h_0``; an LSTM's ``h_0`` and ``c_0``);
every step-indexed quantity of the cell and the output layer as ``name[t]``
(Elman xh: ``x z h o y_hat y``; LSTM xh: ``x i f o g c h s y_hat y``); the
adjoint of each, ∂L/∂q[t], by the notation's adjoint name (``dh[t]``,
``dc[t]``; ``delta[t]`` for the Elman pre-activation); and for a quantity
``q[t] = f(a)`` the adjoint of its argument, ``delta_q[t]`` (an LSTM's
``delta_i[t]`` = ∂L/∂(W_xi x[t] + W_hi h[t-1] + b_i)).  For the Elman cell:

=====================  =============  =============  ================  ==============
role                   xh             uvw            layered           aa
=====================  =============  =============  ================  ==============
input weight           ``W_xh``       ``U``          ``W_1``           ``w_ax``
recurrent weight       ``W_hh``       ``W``          ``W_h1``          ``w_aa``
output weight          ``W_hy``       ``V``          ``W_2``           ``w_ya``
hidden bias            ``b_h``        ``b_h``        ``beta_1``        ``b_a``
output bias            ``b_y``        ``b_y``        ``beta_2``        ``b_y``
input                  ``x[t]``       ``x[t]``       ``X[t]``          ``x[t]``
hidden pre-activation  ``z[t]``       ``a[t]``       ``Z1[t]``         ``net_a[t]``
hidden state           ``h[t]``       ``h[t]``       ``H1[t]``         ``a[t]``
output pre-activation  ``o[t]``       ``o[t]``       ``Z2[t]``         ``net_y[t]``
prediction             ``y_hat[t]``   ``y_hat[t]``   ``Y_hat[t]``      ``y[t]``
target                 ``y[t]``       ``y[t]``       ``Y[t]``          ``y_hat[t]``
initial state          ``h_0``        ``h_0``        ``H_init``        ``a_0``
same as                ``h[0]``       ``h[0]``       ``H1[-1]``        ``a[0]``
=====================  =============  =============  ================  ==============

``T`` is the number of steps, ``m`` the batch size and ``n_0``, ``n_1``,
``n_2`` the input, hidden and output sizes; the functions are ``tanh exp log
sigmoid`` (elementwise, and any other function the cell's equations call),
``softmax`` (over the output units), ``ones(rows, cols)`` and
``diag(vector)``; the reducers ``sum_t``, ``sum_k`` and ``prod_j``
(:mod:`symbptt.expr.exprlang`).  Steps run 1..T (0..T-1 in Elman's ``layered``);
a state one step before the first is its initial value, an adjoint one step
after the last is zero (so is one at a step nothing reaches), a cell's
quantity one step after the last may appear only where such a zero adjoint
cancels it (``dc[t+1] * f[t+1]``), and any other step outside the model is
an error.  In many_to_one models only the last step has an output and a
target.  As in its seed, the ``aa`` notation calls the prediction ``y`` and
the target ``y_hat``.

The correct formula keeps by name the adjoints that carry the recursion (read
one step later: δ_{t+1}; an LSTM's dc_{t+1}, δ^i_{t+1}, ...) or that two other
adjoints read (an LSTM's dh_t), each with its line of the recursion; other
adjoints are written out.  The named mistakes are mutations of the derivation's
rules, for any cell (:mod:`symbptt.checker.mutations`); a difference no mistake
explains says so.

The package, by responsibility: :mod:`~symbptt.checker.language` (the names),
:mod:`~symbptt.checker.namespace` (what each name stands for),
:mod:`~symbptt.checker.printer` and :mod:`~symbptt.checker.formulas` (the correct
formula in the language), :mod:`~symbptt.checker.work` and
:mod:`~symbptt.checker.points` (the concrete model and its random instances),
:mod:`~symbptt.checker.prover` (the symbolic proof),
:mod:`~symbptt.checker.callables`, :mod:`~symbptt.checker.diagnosis` (the named
mistakes), :mod:`~symbptt.checker.localise`, :mod:`~symbptt.checker.report` (the
result) and :mod:`~symbptt.checker.core` (:func:`check`).  The expression
language itself is :mod:`symbptt.expr.exprlang`, shared with the cell files.
"""

from __future__ import annotations

from .core import Candidate, check
from .formulas import Formula, correct_formula, model_equations
from .language import NameInfo, names, names_text
from .limits import DPS
from .namespace import namespace
from .report import CheckResult, Counterexample, Mistake

__all__ = [
    "DPS",
    "Candidate",
    "CheckResult",
    "Counterexample",
    "Formula",
    "Mistake",
    "NameInfo",
    "check",
    "correct_formula",
    "model_equations",
    "names",
    "names_text",
    "namespace",
]
