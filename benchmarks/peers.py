"""The generated modules against their peers, size by size: generated / best peer.

    python benchmarks/peers.py [--cells elman,lstm] [--dtypes float64,float32]
                               [--backends numpy,torch,jax] [--repeats N] [--quick]

``--backends`` names the rows timed (default: all three; ``--no-torch`` and
``--no-jax`` leave one out); the others print ``-`` and their ratio ``nan``.

The same model (the cell's equations in the xh notation, softmax output,
cross-entropy summed over time and averaged over the batch) computed by:

* the generated NumPy module, as a user calls it (``loss_and_gradients``,
  validation on) and with ``check=False``;
* the generated torch module (``symbptt.emit(spec, backend="torch")``, unrolled
  for the size's T), as a user calls it: ``loss(...).backward()``;
* hand-written hoisted NumPy (cuDNN's schedule: ``baselines.HOISTED``);
* hand-written per-step NumPy (min-char-rnn, batched: ``baselines.elman``; Elman only);
* PyTorch autograd: ``nn.RNN`` / ``nn.LSTM`` + ``nn.Linear`` + the loss, ``backward()``,
  with the same weights (the second recurrent bias set to zero);
* the generated JAX module (``symbptt.emit(spec, backend="jax")``), as a user calls it:
  ``loss_and_gradients`` (compiled with ``jax.jit``, validation on);
* JAX autodiff: ``jax.jit(jax.value_and_grad(loss))`` of the same model written as a
  ``lax.scan`` (:func:`jax_peer`), with the same weights.

Before any timing, at every size and dtype, every implementation's loss and
gradients are compared with one reference (the hand-written hoisted NumPy,
itself proven by finite differences in ``tests/test_baselines.py``); a
mismatch stops the run.  Times are medians in one process with one thread (BLAS
and torch), the implementations taking turns in blocks of calls of about a
millisecond (``benchmarks/timing.py`` says why blocks); each row prints every time and
generated / best peer: against the best NumPy peer (target <= 0.9), the
torch module against torch autograd (target <= 1.0) and the JAX module against
JAX autodiff (target <= 1.0).  XLA runs on one thread too (``XLA_FLAGS``).

With the NumPy peers it times ``baselines.floor``: the calls any BPTT of the cell
must make, alone, into preallocated arrays (the batched input, output and
weight-gradient products, T - 1 recurrent products each way, one elementwise
call per step each way), and prints floor / best peer: above the NumPy target,
no NumPy code making those calls reaches it at that size.

OpenBLAS settings that slow current NumPy on these machines
(``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``; ../shared/FACTS.md) are removed
from this process's environment before NumPy is imported: this run only.
"""

from __future__ import annotations

import importlib.util
import os

for _variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_variable, None)
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import argparse  # noqa: E402 - after the environment settings
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import baselines  # noqa: E402 - benchmarks/baselines.py: run as a script, benchmarks/ is on sys.path
import numpy as np  # noqa: E402
import timing  # noqa: E402 - benchmarks/timing.py

import symbptt  # noqa: E402

Sizes = tuple[int, int, int, int, int]  # (T, m, n_in, n_hidden, n_out)
#: Issue 11's sizes.
SIZES: list[Sizes] = [
    (10, 1, 4, 8, 4),
    (25, 1, 65, 100, 65),
    (50, 32, 64, 128, 64),
    (100, 64, 256, 512, 256),
]
QUICK: list[Sizes] = SIZES[:2]
NUMPY_TARGET = 0.9
TORCH_TARGET = 1.0
JAX_TARGET = 1.0
#: What ``--backends`` chooses from: the generated module of each and its peers.
BACKENDS = ("numpy", "torch", "jax")
#: The torch modules' gate order (nn.LSTM: i, f, g, o) in the cell files' names.
TORCH_LSTM_GATES = ("i", "f", "c", "o")


def spec_for(cell: str, steps: int) -> symbptt.ModelSpec:
    return symbptt.ModelSpec(
        cell=cell,
        steps=steps,
        notation="xh",
        output="softmax",
        loss="cross_entropy",
        mode="many_to_many",
        time_reduction="sum",
        batch_reduction="mean",
    )


def check(name: str, loss: float, grads: dict[str, Any], reference: tuple[float, Any], tol: float):
    """Raise unless ``loss`` and ``grads`` equal the reference's (relative to their scale)."""
    ref_loss, ref_grads = reference
    if abs(loss - ref_loss) > tol * max(1.0, abs(ref_loss)):
        raise AssertionError(f"{name}: loss {loss} differs from the reference's {ref_loss}")
    if set(grads) != set(ref_grads):
        raise AssertionError(f"{name}: parameters {sorted(grads)} vs {sorted(ref_grads)}")
    for key, value in ref_grads.items():
        error = float(np.abs(np.asarray(grads[key]) - value).max())
        if error > tol * max(1.0, float(np.abs(value).max())):
            raise AssertionError(f"{name}: d{key} differs from the reference's by {error:.1e}")


def torch_peer(cell: str, params: dict[str, Any], X: Any, Y: Any) -> tuple[Any, Any]:
    """(step, gradients): nn.RNN / nn.LSTM + nn.Linear + the loss with backward(), holding
    ``params`` (the second recurrent bias zero), and a function giving its gradients in
    the cell files' names."""
    import torch

    m = X.shape[1]
    n_in = X.shape[2]
    n = params["W_hy"].shape[1]
    dtype = torch.float64 if X.dtype == np.float64 else torch.float32
    gates = TORCH_LSTM_GATES if cell == "lstm" else ("h",)
    if cell == "lstm":
        rnn: Any = torch.nn.LSTM(n_in, n)
    else:
        rnn = torch.nn.RNN(n_in, n, nonlinearity="tanh")
    rnn = rnn.to(dtype)
    linear = torch.nn.Linear(n, params["W_hy"].shape[0]).to(dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([params[f"W_x{k}"] for k in gates])))
        rnn.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([params[f"W_h{k}"] for k in gates])))
        rnn.bias_ih_l0.copy_(
            torch.from_numpy(np.concatenate([params[f"b_{k}"] for k in gates])[:, 0])
        )
        rnn.bias_hh_l0.zero_()
        linear.weight.copy_(torch.from_numpy(params["W_hy"]))
        linear.bias.copy_(torch.from_numpy(params["b_y"][:, 0]))
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def step() -> Any:
        rnn.zero_grad(set_to_none=True)
        linear.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        loss = -(y * torch.log_softmax(linear(out), dim=-1)).sum() / m
        loss.backward()
        return loss

    def gradients() -> tuple[float, dict[str, Any]]:
        loss = float(step().detach())
        grads: dict[str, Any] = {
            "W_hy": linear.weight.grad.numpy(),
            "b_y": linear.bias.grad[:, None].numpy(),
        }
        for j, k in enumerate(gates):
            rows = slice(j * n, (j + 1) * n)
            grads[f"W_x{k}"] = rnn.weight_ih_l0.grad[rows].numpy()
            grads[f"W_h{k}"] = rnn.weight_hh_l0.grad[rows].numpy()
            grads[f"b_{k}"] = rnn.bias_ih_l0.grad[rows, None].numpy()
        return loss, grads

    return step, gradients


def jax_peer(cell: str, params: dict[str, Any], X: Any, Y: Any) -> tuple[Any, Any]:
    """(step, gradients): ``jax.jit(jax.value_and_grad(loss))`` of the model written by hand
    as a ``lax.scan`` over the steps (the input projections inside the step)."""
    import jax
    import jax.numpy as jnp

    m = X.shape[1]

    def gate(p: Any, k: str, x: Any, h: Any) -> Any:
        return x @ p[f"W_x{k}"].T + h @ p[f"W_h{k}"].T + p[f"b_{k}"].T

    def loss(p: Any, x: Any, y: Any) -> Any:
        n = p["W_hy"].shape[1]
        h0 = jnp.zeros((m, n), x.dtype)
        if cell == "lstm":

            def step(carry: Any, x_t: Any) -> Any:
                h, c = carry
                i = jax.nn.sigmoid(gate(p, "i", x_t, h))
                f = jax.nn.sigmoid(gate(p, "f", x_t, h))
                o = jax.nn.sigmoid(gate(p, "o", x_t, h))
                c = f * c + i * jnp.tanh(gate(p, "c", x_t, h))
                h = o * jnp.tanh(c)
                return (h, c), h

            _, hs = jax.lax.scan(step, (h0, h0), x)
        else:

            def step(h: Any, x_t: Any) -> Any:
                h = jnp.tanh(gate(p, "h", x_t, h))
                return h, h

            _, hs = jax.lax.scan(step, h0, x)
        scores = hs @ p["W_hy"].T + p["b_y"].T
        return -(y * jax.nn.log_softmax(scores, axis=-1)).sum() / m

    compiled = jax.jit(jax.value_and_grad(loss))
    p, x, y = {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(X), jnp.asarray(Y)

    def run() -> Any:
        value, grads = compiled(p, x, y)
        jax.block_until_ready(grads)
        return value, grads

    def gradients() -> tuple[float, dict[str, Any]]:
        value, grads = run()
        return float(value), {k: np.asarray(v) for k, v in grads.items()}

    return run, gradients


def jax_module_peer(module: Any, params: dict[str, Any], X: Any, Y: Any) -> tuple[Any, Any]:
    """(step, gradients) of the generated JAX module, called as a user calls it."""
    import jax
    import jax.numpy as jnp

    p, x, y = {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(X), jnp.asarray(Y)

    def run() -> Any:
        value, grads = module.loss_and_gradients(p, x, y)
        jax.block_until_ready(grads)
        return value, grads

    def gradients() -> tuple[float, dict[str, Any]]:
        value, grads = run()
        return float(value), {k: np.asarray(v) for k, v in grads.items()}

    return run, gradients


def torch_module_peer(module: Any, params: dict[str, Any], X: Any, Y: Any) -> tuple[Any, Any]:
    """(step, gradients) of the generated torch module, called as a user calls it."""
    import torch

    leaves = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def step() -> Any:
        for leaf in leaves.values():
            leaf.grad = None
        loss = module.loss(leaves, x, y)
        loss.backward()
        return loss

    def gradients() -> tuple[float, dict[str, Any]]:
        loss = float(step().detach())
        return loss, {k: v.grad.numpy() for k, v in leaves.items()}

    return step, gradients


def run(
    cell: str,
    sizes_run: Sequence[Sizes],
    dtypes: Sequence[Any],
    base: int,
    use_torch: bool,
    use_jax: bool = False,
    use_numpy: bool = True,
) -> list[str]:
    """One cell's table; returns the rows whose ratios missed their targets."""
    module = symbptt.load_module(symbptt.emit_numpy(spec_for(cell, 4)))
    gates = {"elman": 1, "lstm": 4, "gru": 3}[cell]
    print(f"\n{cell}: xh notation, softmax, cross-entropy (sum over time, mean over the batch)")
    names = ["generated", "check=False", "hoisted", "per-step", "floor", "torch mod", "torch"]
    names += ["jax mod", "jax"]
    head = " ".join(f"{n:>11}" for n in names)
    print(
        f"{'(T, m, n_in, n_hidden, n_out)':27} {'dtype':7} {head} {'gen/best':>8}"
        f" {'floor/best':>10} {'mod/torch':>9} {'mod/jax':>8}"
    )
    missed = []
    for sizes in sizes_run:
        torch_module = jax_module = None
        spec = spec_for(cell, sizes[0])
        if use_torch:
            torch_module = symbptt.load_module(symbptt.emit(spec, backend="torch"))
        if use_jax:
            jax_module = symbptt.load_module(symbptt.emit(spec, backend="jax"))
        for dtype in dtypes:
            modules = (module, torch_module, jax_module)
            medians = _time_one(cell, sizes, dtype, modules, base, gates, use_numpy)
            numpy_peers = [medians[k] for k in ("hoisted", "per-step") if k in medians]
            ratio = medians["generated"] / min(numpy_peers) if use_numpy else float("nan")
            floor = medians["floor"] / min(numpy_peers) if use_numpy else float("nan")
            torch_ratio = medians["torch mod"] / medians["torch"] if use_torch else float("nan")
            jax_ratio = medians["jax mod"] / medians["jax"] if use_jax else float("nan")
            row = " ".join(
                f"{medians[n] * 1e3:9.3f}ms" if n in medians else f"{'-':>11}" for n in names
            )
            name = np.dtype(dtype).name
            print(
                f"{sizes!s:27} {name:7} {row} {ratio:8.2f} {floor:10.2f} {torch_ratio:9.2f}"
                f" {jax_ratio:8.2f}",
                flush=True,
            )
            where = f"{cell} {sizes} {name}"
            if use_numpy and ratio > NUMPY_TARGET:
                why = "out of reach: floor" if floor > NUMPY_TARGET else "floor"
                missed.append(
                    f"{where}: generated / best NumPy peer {ratio:.2f} > {NUMPY_TARGET}"
                    f" ({why} / best {floor:.2f})"
                )
            if use_torch and torch_ratio > TORCH_TARGET:
                missed.append(f"{where}: torch module / torch autograd {torch_ratio:.2f}")
            if use_jax and jax_ratio > JAX_TARGET:
                missed.append(f"{where}: JAX module / JAX autodiff {jax_ratio:.2f}")
    return missed


def _time_one(
    cell: str,
    sizes: Sizes,
    dtype: Any,
    modules: tuple[Any, Any, Any],
    base: int,
    gates: int,
    use_numpy: bool = True,
) -> dict[str, float]:
    """Check every implementation against the reference, then time them: the NumPy ones
    interleaved in one pass (unless not ``use_numpy``), the torch ones in another (torch's
    calls evict the caches), the JAX ones in a third."""
    module, torch_module, jax_module = modules
    T, m, n_in, n_hidden, n_out = sizes
    rng = np.random.default_rng(0)
    params = baselines.init_params(cell, n_in, n_hidden, n_out, rng=rng, dtype=dtype)
    X, Y = baselines.random_data(T, m, n_in, n_out, rng=rng)
    X, Y = X.astype(dtype), Y.astype(dtype)
    hoisted = baselines.HOISTED[cell]
    workspace: dict[str, Any] = {}
    reference = hoisted(params, X, Y)
    tol = 1e-9 if dtype == np.float64 else 2e-3
    # timed in this order: check=False not right after the generated call, whose
    # workspace it shares (it would find it in the cache and seem the faster for it)
    numpy_steps: dict[str, Callable[[], Any]] = {
        "generated": lambda: module.loss_and_gradients(params, X, Y),
        "hoisted": lambda: hoisted(params, X, Y, workspace=workspace),
        "check=False": lambda: module.loss_and_gradients(params, X, Y, check=False),
        "floor": baselines.floor(cell, params, X),
    }
    check("generated", *module.loss_and_gradients(params, X, Y), reference, tol)
    check("generated, check=False", *numpy_steps["check=False"](), reference, tol)
    check("hoisted (workspace)", *hoisted(params, X, Y, workspace=workspace), reference, tol)
    if cell == "elman":
        numpy_steps["per-step"] = lambda: baselines.elman(params, X, Y)
        check("per-step", *baselines.elman(params, X, Y), reference, tol)
    torch_steps: dict[str, Callable[[], Any]] = {}
    if torch_module is not None:
        torch_steps["torch mod"], gradients = torch_module_peer(torch_module, params, X, Y)
        check("generated torch module", *gradients(), reference, tol)
        torch_steps["torch"], gradients = torch_peer(cell, params, X, Y)
        check("torch autograd", *gradients(), reference, tol)
    jax_steps: dict[str, Callable[[], Any]] = {}
    if jax_module is not None:
        jax_steps["jax mod"], gradients = jax_module_peer(jax_module, params, X, Y)
        check("generated JAX module", *gradients(), reference, tol)
        jax_steps["jax"], gradients = jax_peer(cell, params, X, Y)
        check("JAX autodiff", *gradients(), reference, tol)
    repeats = timing.repeats_for(sizes, base, gates)
    medians = {}
    if not use_numpy:
        numpy_steps = {}
    for steps in (numpy_steps, torch_steps, jax_steps):
        if steps:
            times = timing.median_times(list(steps.values()), repeats)
            medians.update(zip(steps, times, strict=True))
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="elman,lstm", help="default: %(default)s")
    parser.add_argument("--dtypes", default="float64,float32", help="default: %(default)s")
    parser.add_argument(
        "--repeats", type=int, default=200, help="most calls timed per implementation"
    )
    parser.add_argument("--quick", action="store_true", help=f"the two small sizes only: {QUICK}")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="the generated modules and peers timed, of %(default)s",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave the torch rows out")
    parser.add_argument("--no-jax", action="store_true", help="leave the JAX rows out")
    args = parser.parse_args(argv)
    backends = [name for name in args.backends.split(",") if name]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends: expected names from {','.join(BACKENDS)}, got {args.backends}")
    args.no_torch = args.no_torch or "torch" not in backends
    args.no_jax = args.no_jax or "jax" not in backends
    use_numpy = "numpy" in backends
    use_jax = not args.no_jax and importlib.util.find_spec("jax") is not None
    if use_jax:
        import jax

        jax.config.update("jax_enable_x64", True)
    else:
        print("jax: not timed" + (" (not installed)" if not args.no_jax else ""))
    if not use_numpy:
        print("numpy: not timed")
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if use_torch:
        import torch

        torch.set_num_threads(1)
    else:
        print("torch: not timed" + (" (not installed)" if not args.no_torch else ""))
    dtypes = [np.dtype(name).type for name in args.dtypes.split(",")]
    missed = []
    for cell in args.cells.split(","):
        sizes = QUICK if args.quick else SIZES
        missed += run(cell, sizes, dtypes, args.repeats, use_torch, use_jax, use_numpy)
    print(f"\ntargets: generated NumPy <= {NUMPY_TARGET} of the best NumPy peer; "
          f"torch module <= {TORCH_TARGET} of torch autograd; "
          f"JAX module <= {JAX_TARGET} of JAX autodiff")  # fmt: skip
    for line in missed:
        print(f"missed: {line}")
    if not missed:
        print("every target met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
