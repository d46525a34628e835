"""The expression vocabulary every stage speaks: matrix-expression nodes, the functions
(activations, outputs, losses) each defined once, and the safe language users type formulas in."""
