"""The derivation: the unrolled graph with its symbol registry (``graph``), the VJP rule table
(``rules``), reverse mode keeping every stage (``derive``), and the one numeric evaluator of the
expressions (``evaluate``)."""
