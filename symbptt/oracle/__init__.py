"""The independent checks, run on the stages before them: the scalar ``sympy.diff`` proof of the
explicit unrolled loss (``verify``), finite differences on generated code (``gradcheck``), and the
verifying stage that runs them and hands the results to the documents (``verification``)."""
