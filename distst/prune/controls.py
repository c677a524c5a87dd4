"""The lottery-ticket controls (``prune.control``): strategies that change one part of an IMP level each.

Frankle & Carbin's experiments compare a ticket with what it would be without one ingredient; as open_lth's
branches, each control is a small class that overrides only the part it changes, and the IMP schedule asks
whichever is configured, never which one it is:

- ``none``: iterative magnitude pruning with rewinding (the ticket);
- ``random_prune``: as many weights kept per layer-set as IMP keeps, but chosen at random among the survivors;
- ``random_reinit``: IMP's masks, but the survivors re-initialised (a new init per level) instead of rewound;
- ``one_shot``: the dense level, then one level pruned at once to the last round's sparsity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from .masks import Masks, random_subset


class Control:
    """``prune.control=none``: iterative magnitude pruning with rewinding."""

    name: ClassVar[str] = "none"

    def levels(self, rounds: int) -> list[int]:
        """Level numbers trained (0 is the dense level)."""
        return list(range(rounds + 1))

    def ranked_level(self, level: int) -> int:
        """The level whose trained weights (and masks) ``level``'s masks are ranked from."""
        return level - 1

    def depth(self, rounds: int, level: int) -> int:
        """How many rounds of ``prune.rate`` the masks of ``level`` amount to."""
        return level

    def choose(self, ranked: Masks, prior: Masks, seed: int, level: int) -> Masks:
        """The level's masks, given magnitude pruning's choice ``ranked`` and the masks it started from."""
        return ranked

    def fresh_weights(self, initialise: Callable[[], dict[str, Tensor]], seed: int, level: int
                      ) -> dict[str, Tensor] | None:
        """Weights the level's survivors start from instead of the rewind point (``initialise()`` makes a
        fresh model's), or None to rewind."""
        return None


class RandomPrune(Control):
    name = "random_prune"

    def choose(self, ranked: Masks, prior: Masks, seed: int, level: int) -> Masks:
        generator = torch.Generator().manual_seed(seed * 1000 + level)
        return {name: random_subset(prior[name], int(mask.sum()), generator) for name, mask in ranked.items()}


class RandomReinit(Control):
    name = "random_reinit"

    def fresh_weights(self, initialise: Callable[[], dict[str, Tensor]], seed: int, level: int
                      ) -> dict[str, Tensor] | None:
        torch.manual_seed(seed + 7919 * level)  # a different init per level, reproducible
        return initialise()


class OneShot(Control):
    name = "one_shot"

    def levels(self, rounds: int) -> list[int]:
        return [0, 1] if rounds else [0]

    def ranked_level(self, level: int) -> int:
        return 0

    def depth(self, rounds: int, level: int) -> int:
        return rounds if level > 0 else 0


CONTROLS: dict[str, Control] = {c.name: c for c in (Control(), RandomPrune(), RandomReinit(), OneShot())}
