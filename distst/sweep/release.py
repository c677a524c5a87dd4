"""Free the Ray Train placement group of a multi-process trial that Tune ended (Ray 2.60 leaks it).

When a scheduler (ASHA) stops a trial whose function runs an inner ``TorchTrainer``, Tune ends the trial's
actor; the Train controller dies with it, but the workers' placement group is scoped to the job, not to the
controller, and stays reserved (Ray's own cleaner asks the state API, which needs the dashboard). The next
trial's workers then wait forever for CPUs. Rank 0 of every multi-process trial writes its placement group's
id into the run directory; this driver-side callback removes that group whenever a trial ends, for any reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback

from .trial import PLACEMENT_GROUP_FILE

log = logging.getLogger(__name__)


def remove_placement_group_by_id(hex_id: str) -> bool:
    """Remove the placement group ``hex_id`` unless it is gone already; True when it was removed here."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    group = PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id)))
    state = ray.util.placement_group_table(group).get("state")
    if state in (None, "REMOVED"):
        return False
    remove_placement_group(group)
    return True


class ReleaseTrainPlacementGroups(Callback):
    """Tune callback: after a trial completes, errors or is stopped, remove its Train placement group."""

    def __init__(self, trials_dir: Path) -> None:
        self.trials_dir = Path(trials_dir)
        self.released: list[str] = []

    def _release(self, trial: Any) -> None:
        path = self.trials_dir / trial.trial_id / PLACEMENT_GROUP_FILE
        if not path.is_file():
            return
        hex_id = path.read_text().strip()
        try:
            if remove_placement_group_by_id(hex_id):
                self.released.append(trial.trial_id)
                log.info("trial %s ended: removed its Ray Train placement group %s", trial.trial_id, hex_id)
        except Exception as err:  # noqa: BLE001 - a cleanup failure must not end the sweep
            log.warning("could not remove placement group %s of trial %s: %s", hex_id, trial.trial_id, err)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)
