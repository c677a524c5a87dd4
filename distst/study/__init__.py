"""``distst study``: several compression runs of one model, measured the same way (``spec``: the study file and
its runs; ``pareto``: the non-dominated models)."""
