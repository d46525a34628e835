"""How long `symbptt derive` takes to write its documents, against issue 12's targets.

    python benchmarks/documents.py [--repeats 3] [--no-pdf-only]

Issue 12's targets, on this machine, for the default "hello" model
(``--preset xh_hello``): ``symbptt derive`` under 2 s without the PDF and under
5 s with it at T = 4, and under 10 s with the PDF at T = 25.  This script runs
the command itself (a fresh process each time: the import is part of what a
user waits for) and prints the median wall time and its ratio to the target
(a ratio ≤ 1.0 meets it), and the CPU time (user + system) the command used,
which other work on the machine moves less than the wall time.  Then, in this
process, the stages one by one (derive, the generated code, the verifying stage's
scalar proof, numerical check and worked example, rendering, pdflatex) so
the numbers say where the time goes; and
a composed model's document (two layers, bidirectional, masked: derive, proof,
render) for scale.  It asserts nothing about time.  The load of the machine is
printed first: other processes on these two cores slow every number alike.

Baseline measured in the same run: ``python -c "import symbptt"``, the floor
every command pays.  One BLAS thread, as every benchmark here.  The commands run
with compiled bytecode, as from an installed package: Python writes it into a
temporary folder (``PYTHONPYCACHEPREFIX``, removed at the end; this overrides a
``PYTHONDONTWRITEBYTECODE`` in the environment) during one untimed run first.
Without it every command compiles the whole package again (about 0.2 s here).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ.pop("OPENBLAS_CORETYPE", None)  # slows current numpy (FACTS.md)

#: (preset, T, with the PDF, target in seconds): issue 12.
CASES = (
    ("xh_hello", 4, False, 2.0),
    ("xh_hello", 4, True, 5.0),
    ("xh_hello", 25, True, 10.0),
)


def _median(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """The median wall time of ``run`` and the median CPU time (user + system) of the
    processes it ran: on a machine shared with other work the CPU time moves less."""
    times, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(times), statistics.median(cpu)


def _command(preset: str, steps: int, pdf: bool, env: dict[str, str]) -> Callable[[], object]:
    def run() -> None:
        with tempfile.TemporaryDirectory(prefix="symbptt-bench-") as folder:
            argv = [sys.executable, "-m", "symbptt", "derive", "--preset", preset]
            argv += ["--steps", str(steps), "--out", str(Path(folder) / "out")]
            if not pdf:
                argv.append("--no-pdf")
            subprocess.run(argv, check=True, capture_output=True, env=env)

    return run


def _bytecode_env(folder: str) -> dict[str, str]:
    """The environment of the timed commands: bytecode written to and read from ``folder``."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = folder
    return env


def stages(preset: str, steps: int, pdf: bool) -> list[tuple[str, float]]:
    """Each stage of the command once, in this process (imports already paid)."""
    from dataclasses import replace

    import numpy as np

    import symbptt
    from symbptt import documents
    from symbptt.codegen.emit import load_module
    from symbptt.model.presets import PRESETS
    from symbptt.oracle import gradcheck, verification
    from symbptt.oracle import verify as scalar_oracle

    spec = replace(PRESETS[preset], steps=steps)
    out: list[tuple[str, float]] = []

    def timed(label: str, run: Callable[[], object]) -> object:
        start = time.perf_counter()
        value = run()
        out.append((label, time.perf_counter() - start))
        return value

    d = timed("derive", lambda: symbptt.derive(spec))
    source = timed("generated code", lambda: symbptt.emit_numpy(d))  # type: ignore[arg-type]
    module = load_module(source)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    small = verification.proof_spec(spec)
    own = d if small.steps == spec.steps else None  # as run_checks: the document's own
    label = f"scalar proof (T = {small.steps})"
    timed(label, lambda: scalar_oracle.direction_proof(small, rng, own))  # type: ignore[arg-type]
    timed("numerical check", lambda: gradcheck.gradcheck(module, np.random.default_rng(0)))
    timed("worked example", lambda: verification.worked_example(d, module))  # type: ignore[arg-type]
    timed("the seed's formulas (checker)", lambda: verification.seed_checks(spec))
    checks = verification.run_checks(d, module)  # type: ignore[arg-type]
    tex = timed("render (LaTeX + Markdown)", lambda: documents.render_documents(d, checks=checks))
    if pdf and shutil.which("pdflatex"):
        timed("pdflatex (two passes)", lambda: documents.compile_pdf(tex[0]))  # type: ignore[index]
    return out


def composed() -> list[tuple[str, float]]:
    import numpy as np

    import symbptt
    from symbptt import documents
    from symbptt.oracle import verification
    from symbptt.oracle import verify as scalar_oracle

    spec = symbptt.ModelSpec(steps=4, layers=2, direction="bidirectional", masked=True)
    out: list[tuple[str, float]] = []
    start = time.perf_counter()
    d = symbptt.derive(spec)
    out.append(("derive", time.perf_counter() - start))
    start = time.perf_counter()
    scalar_oracle.direction_proof(verification.proof_spec(spec), np.random.default_rng(0))
    out.append(("scalar proof (T = 2)", time.perf_counter() - start))
    start = time.perf_counter()
    documents.render_documents(d)
    out.append(("render (LaTeX + Markdown)", time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pdf-only", action="store_true", help="skip the cases with a PDF")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="symbptt-bench-pyc-") as pyc:
        env = _bytecode_env(pyc)
        _command(*CASES[0][:3], env)()  # untimed: writes the bytecode
        floor, floor_cpu = _median(
            lambda: subprocess.run([sys.executable, "-c", "import symbptt"], check=True, env=env),
            args.repeats,
        )
        print(f"baseline: python -c 'import symbptt'  {floor:7.2f} s  (CPU {floor_cpu:.2f} s)")
        print(
            f"{'command':<54} {'median':>8} {'target':>8} {'ratio':>7} {'vs import':>10} {'CPU':>7}"
        )
        for preset, steps, pdf, target in CASES:
            if pdf and (args.no_pdf_only or shutil.which("pdflatex") is None):
                continue
            seconds, cpu = _median(_command(preset, steps, pdf, env), args.repeats)
            label = f"symbptt derive --preset {preset} --steps {steps}"
            label += "" if pdf else " --no-pdf"
            print(
                f"{label:<54} {seconds:7.2f}s {target:7.1f}s {seconds / target:7.2f}"
                f" {seconds / floor:9.1f}x {cpu:6.2f}s"
            )
    for preset, steps, pdf, _ in CASES[1:]:
        print(f"\nstages, {preset} at T = {steps} (in process):")
        for label, seconds in stages(preset, steps, pdf):
            print(f"  {label:<30} {seconds:7.2f} s")
    print("\ncomposed model (2 layers, bidirectional, masked, Elman, T = 4; in process):")
    for label, seconds in composed():
        print(f"  {label:<30} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
