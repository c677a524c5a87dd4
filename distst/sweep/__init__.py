"""Ray Tune sweeps of distst runs: sweep files (``spec``), the trial (``trial``), the Tune set-up (``runner``),
the placement-group fix (``release``) and the results table and plot (``results``).

Only ``spec`` is imported here: Ray is imported when a sweep actually runs.
"""

from .spec import SweepSpec, load_sweep

__all__ = ["SweepSpec", "load_sweep"]
