"""Ray Tune sweeps of distst runs: sweep files (``spec``), what a trial runs and reports (``kinds``: IMP levels,
channel-pruning train stages), the trial (``trial``), the Tune set-up (``runner``), the placement-group fix
(``release``) and the results table and plot (``results``).

Nothing is imported here: building the CLI (and ``distst.bench.tune``) must not pull in pydantic or Ray.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("SweepSpec", "load_sweep"):
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'distst.sweep' has no attribute {name!r}")


__all__ = ["SweepSpec", "load_sweep"]
