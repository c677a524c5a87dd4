"""A study's runs as Ray Tune trials (a grid over the run names), each in ``<out>/runs/<name>``; a finished run
is reused without any Ray work. Runs resume from their own checkpoints, as a sweep's trials do."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import stop
from ..config import with_overrides
from ..prune.schedule import run_schedule, schedule_class
from ..registry import method_record
from ..sweep.trial import POLL_S, Background, prepare_process_env
from ..train import train
from .finals import finished
from .spec import DENSE, Study, StudyRun, load_study, pipeline_steps


def run_dir(out: Path, name: str) -> Path:
    return out / "runs" / name


def dense_teacher(out: Path) -> Path:
    """The model file of the study's dense run: the teacher of every run with ``learns_from_dense``."""
    return run_dir(out, DENSE) / "model.pt"


def run_one(run: StudyRun, study: Study, out: Path, request: stop.StopRequest | None = None) -> None:
    """Train (or resume) one run of the study in its directory, in the study's W&B group."""
    folder = run_dir(out, run.name)
    values = {"run.out_dir": str(folder), "tracking.group": study.name}
    if run.learns_from_dense:
        values["distill.teacher"] = str(dense_teacher(out))
    cfg = with_overrides(run.cfg, values)
    if schedule_class(cfg) is not None:
        run_schedule(cfg, folder, stop=request)
    else:  # dense, QAT: one training run, the method record's own strategy
        train(cfg, folder, method_record(cfg.prune.method).factory(cfg), stop=request)


@dataclass(frozen=True)
class StudySetup:
    """What every trial shares (plain data: each trial rebuilds the study from its file)."""

    file: str
    out: str
    cwd: str
    cpus: float = 1.0


def study_trial(params: dict[str, Any], setup: StudySetup) -> None:
    """Tune function trainable: one study run, then one report (Tune's trial is done when the run is)."""
    import torch
    from ray import tune

    os.chdir(setup.cwd)  # job paths in the study file are relative to where the study was started
    study = load_study(setup.file)
    run = next(r for r in study.runs if r.name == params["run"])
    torch.set_num_threads(max(1, int(setup.cpus)))
    prepare_process_env(single_process=True)
    request = stop.StopRequest()
    worker = Background(lambda: run_one(run, study, Path(setup.out), request), name=f"study-{run.name}")
    worker.start()
    try:
        while worker.is_alive():
            time.sleep(POLL_S)
    except BaseException:
        request.set("stopped by Ray Tune")  # the run checkpoints at its next step and resumes next time
        raise
    if worker.error is not None:
        raise worker.error
    tune.report({"finished": int(finished(run_dir(Path(setup.out), run.name)))})


def run_study(study: Study, file: Path, out: Path, max_failures: int = 1) -> list[str]:
    """Run every unfinished run, ``study.file.concurrency`` at a time: first the dense run and every run that does
    not learn from it, then those that do (their teacher is its model file). Within each grid the longest
    pipelines start first, so no slot idles at the end behind one long run. Returns the names that were run."""
    todo = sorted((r for r in study.runs if not finished(run_dir(out, r.name))),
                  key=lambda r: -pipeline_steps(r.cfg))  # stable: the dense run stays ahead of equal-length runs
    first = [r.name for r in todo if not r.learns_from_dense]
    then = [r.name for r in todo if r.learns_from_dense]
    _fit(study, file, out, first, study.name, max_failures)
    if then and not finished(run_dir(out, DENSE)):
        return first  # stopped before the teacher was done: a re-run resumes
    _fit(study, file, out, then, f"{study.name}_distilled", max_failures)
    return first + then


def _fit(study: Study, file: Path, out: Path, names: list[str], tune_name: str, max_failures: int) -> None:
    """One Ray Tune grid over ``names`` (nothing to do: no Ray work)."""
    from ray import tune

    if not names:
        return
    res = study.file.resources
    setup = StudySetup(str(file.resolve()), str(out.resolve()), os.getcwd(), res.cpus)
    trainable = tune.with_resources(tune.with_parameters(study_trial, setup=setup), {"cpu": res.cpus, "gpu": res.gpus})
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(names)},
        tune_config=tune.TuneConfig(max_concurrent_trials=study.file.concurrency),
        run_config=tune.RunConfig(name=tune_name, storage_path=str((out / "ray").resolve()),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)))
    results = tuner.fit()
    failed = [r for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} study run(s) failed: {failed[0].error}")
