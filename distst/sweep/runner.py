"""Turn a sweep file into a Ray Tune run: search space, search algorithm, scheduler, resources, retries.

Tune keeps its experiment state in ``<sweep dir>/tune`` (what ``--resume`` restores with ``Tuner.restore``);
the trials' distst run directories live in ``<sweep dir>/trials/<trial id>``. Restoring unpickles that state, so
the driver keeps a sealed copy of it (``<sweep dir>/tune.sealed.json``, :mod:`.integrity`) and a resume puts
exactly that copy back before Ray reads anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import integrity
from .release import ReleaseTrainPlacementGroups
from .spec import SweepSpec
from .trial import TRIAL_FUNCTION_CPU, TrialSetup, run_trial

TUNE_STATE = "tune"


@dataclass
class SweepOutcome:
    results: Any  # ray.tune.ResultGrid
    interrupted: bool  # the sweep was stopped (SIGINT/SIGUSR1) before every trial ended: resume it
    sweep_dir: Path


def tune_domain(domain: dict[str, Any]) -> Any:
    """``{grid: [...]}`` etc. -> Ray Tune's search-space objects."""
    from ray import tune

    (kind, values), = domain.items()
    if kind == "value":
        return values
    if kind == "grid":
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    low, high = values
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](low, high)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    # Dotted keys stay flat: Tune nests only on dicts, and the trial hands them to with_overrides as they are.
    return {key: tune_domain(domain) for key, domain in spec.space.items()}


def search_algorithm(spec: SweepSpec) -> Any:
    if spec.search.algorithm != "optuna":
        return None  # Tune's BasicVariantGenerator: grids crossed, other domains sampled
    import warnings

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # A {choice: [[0.3, 0.857], ...]} of lists (prune.ratios) is fine for Optuna's in-memory study, which is
    # all Tune uses; its warning is about persistent storage only.
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be",
                            category=UserWarning)
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))


def scheduler(spec: SweepSpec) -> Any:
    if spec.scheduler.name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # One Tune iteration = one row of the trial's kind (IMP level, channel-pruning train stage): the rungs.
    return ASHAScheduler(time_attr="training_iteration", max_t=spec.max_iterations(),
                         grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)


def trial_setup(spec: SweepSpec, sweep_dir: Path) -> TrialSetup:
    fault = spec.fault_injection
    return TrialSetup(sweep_name=spec.sweep_name, sweep_dir=str(sweep_dir.resolve()), cwd=os.getcwd(),
                      job=str(Path(spec.job).resolve()), fixed=dict(spec.overrides), cpus=spec.resources.cpus, gpus=spec.resources.gpus,
                      processes=spec.resources.processes, macs_budget=spec.objective.macs_budget,
                      fail_once_after_level=fault.fail_once_after_level if fault else None,
                      fail_trials=tuple(fault.trials) if fault else ())


def trainable(spec: SweepSpec, sweep_dir: Path) -> Any:
    """The function trainable with the sweep's shared settings and the trial's resources."""
    from ray import tune

    setup = trial_setup(spec, sweep_dir)
    fn = tune.with_parameters(run_trial, setup=setup)
    if spec.resources.processes == 1:
        return tune.with_resources(fn, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
    # Multi-process: the Train workers hold the trial's CPUs/GPUs in their own placement group; the Tune
    # function only waits and reports, so it asks for a sliver of a CPU (0 is refused).
    return tune.with_resources(fn, {"cpu": TRIAL_FUNCTION_CPU})


def callbacks(sweep_dir: Path, sealer: integrity.SealDriverState | None) -> list[Any]:
    return [ReleaseTrainPlacementGroups(sweep_dir.resolve() / "trials"), *([sealer] if sealer is not None else [])]


def run_config(spec: SweepSpec, sweep_dir: Path, sealer: integrity.SealDriverState | None = None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=TUNE_STATE, storage_path=str(sweep_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # pointers only: the last one is enough
        callbacks=callbacks(sweep_dir, sealer),
        verbose=1,
    )


def build_tuner(spec: SweepSpec, sweep_dir: Path, sealer: integrity.SealDriverState | None = None) -> Any:
    from ray import tune

    tune_config = tune.TuneConfig(
        metric=spec.objective.metric, mode=spec.objective.mode, search_alg=search_algorithm(spec),
        scheduler=scheduler(spec), num_samples=spec.search.samples, max_concurrent_trials=spec.concurrency,
        # A reused single-process actor skips ~8 s of imports; a multi-process trial's actor owns a Train run.
        reuse_actors=spec.resources.processes == 1,
    )
    return tune.Tuner(trainable(spec, sweep_dir), param_space=param_space(spec), tune_config=tune_config,
                      run_config=run_config(spec, sweep_dir, sealer))


def restore_tuner(spec: SweepSpec, sweep_dir: Path, sealer: integrity.SealDriverState | None = None) -> Any:
    from ray import tune

    integrity.restore_sealed(sweep_dir / TUNE_STATE)  # Tune unpickles what is there: only the sealed copy
    restored = tune.Tuner.restore(str(sweep_dir.resolve() / TUNE_STATE), trainable=trainable(spec, sweep_dir),
                                  param_space=param_space(spec), resume_unfinished=True, resume_errored=True)
    # The restored run config holds the callbacks unpickled from tuner.pkl (paths of wherever the sweep was):
    # this driver's own, bound to this sweep folder, replace them.
    if getattr(restored, "_local_tuner", None) is not None:  # None only for a Ray client (ray://) driver
        restored._local_tuner.get_run_config().callbacks = callbacks(sweep_dir, sealer)
    return restored


def can_resume(sweep_dir: Path) -> bool:
    """Whether the sweep directory holds a Tune state to restore. Raises ``SweepStateTampered`` (before Ray
    starts, nothing read but bytes) when a state folder is there without a copy this user's distst sealed: a
    sweep started in it anew would adopt what someone else left there."""
    from ray import tune

    if not (sweep_dir / TUNE_STATE).is_dir():
        return False
    integrity.restore_sealed(sweep_dir / TUNE_STATE)
    return tune.Tuner.can_restore(str(sweep_dir.resolve() / TUNE_STATE))


def run_sweep(spec: SweepSpec, sweep_dir: Path, resume: bool) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep on the Ray instance this process is connected to."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sealer = integrity.SealDriverState(sweep_dir.resolve() / TUNE_STATE)
    tuner = restore_tuner(spec, sweep_dir, sealer) if resume else build_tuner(spec, sweep_dir, sealer)
    results = tuner.fit()  # returns after SIGINT/SIGUSR1 too, once Tune uploaded its last state
    sealer.seal_saved_state()
    return SweepOutcome(results=results, interrupted=bool(unfinished_trials(sweep_dir)), sweep_dir=sweep_dir)


def unfinished_trials(sweep_dir: Path) -> list[str]:
    """Trials the saved experiment state still has pending or running (Tune was interrupted).

    Read from the saved state, not the returned results: on SIGINT/SIGUSR1 Tune saves the state first and then
    terminates the running trials, so the results call them finished although ``Tuner.restore`` will rerun them.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(sweep_dir.resolve() / TUNE_STATE))
    return [t.trial_id for t in analysis.trials if t.status not in ("TERMINATED", "ERROR")]
