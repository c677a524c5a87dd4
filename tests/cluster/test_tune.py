"""distst tune: sweep files, and sweeps of tiny IMP trials (2 levels) on a real local Ray (2 CPUs, no mocks)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, SAMPLE, patience, subprocess_env

from distst.config import ConfigError
from distst.records import record_path
from distst.sweep import load_sweep

# Ray clusters are not run two at a time: every Ray test runs on one xdist worker (--dist loadgroup). A
# function mark, not the module's pytestmark: xdist joins all of a test's group marks into one new group name.
RAY = pytest.mark.xdist_group("ray")

pytest_plugins = ["slurm_fixtures"]

JOB = REPO / "jobs" / "local" / "imp_adain.yaml"
TINY: dict[str, Any] = {
    "model.width": 0.125, "data.content": f"{SAMPLE}/content-{{000000..000001}}.tar",
    "data.style": f"{SAMPLE}/style-{{000000..000001}}.tar", "data.crop": 32, "data.batch_size": 2,
    "data.workers": 0, "data.shuffle_buffer": 16, "data.eval_pairs": 2, "train.steps": 4,
    "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 1, "train.lr": 1e-3,
    "prune.rounds": 1, "prune.rewind_step": 0, "tracking.backend": "none",
}


def write_sweep(path: Path, overrides: dict[str, Any] | None = None, **fields: Any) -> Path:
    body = {"name": path.stem, "job": str(JOB), "overrides": {**TINY, **(overrides or {})}, **fields}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def attempts(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "tune_attempts.jsonl").read_text().splitlines()]


def results_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "results.csv").open() as f:
        return list(csv.DictReader(f))


# --- sweep files --------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"objectiv": {"metric": "total_error"}}, "objectiv: unknown key (did you mean 'objective'?)"),
    ({"scheduler": {"nam": "asha"}}, "scheduler.nam: unknown key (did you mean 'scheduler.name'?)"),
    ({"space": {"prune.ratee": {"grid": [0.2]}}}, "prune.ratee: unknown key (did you mean 'prune.rate'?)"),
    ({"space": {"prune.rate": {"gird": [0.2]}}}, "space.prune.rate.gird: unknown domain (did you mean 'grid'?)"),
    ({"space": {"prune.rate": {"grid": [0.2, 1.5]}}}, "prune.rate"),
    ({"space": {"prune.rate": {"uniform": [0.1]}}}, "space.prune.rate.uniform: give [low, high]"),
    ({"objective": {"metric": "extreme_sparsty"}}, "did you mean 'extreme_sparsity'?"),
    ({"search": {"algorithm": "optuna"}, "space": {"prune.rate": {"grid": [0.2]}}}, "cannot search a {grid"),
])
def test_bad_sweep_files_fail_naming_the_key(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path / "bad.yaml", **fields))
    assert message in str(err.value)


def test_bad_override_in_a_sweep_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.stpes: unknown key \(did you mean 'train.steps'\?\)"):
        load_sweep(write_sweep(tmp_path / "bad.yaml", {"train.stpes": 3}))


@pytest.mark.parametrize("path", sorted((REPO / "tune").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_sweep_files_load_and_build_their_search(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distst.sweep.runner import param_space, scheduler, search_algorithm

    monkeypatch.chdir(REPO)  # sweep files name their job relative to the checkout
    spec = load_sweep(path)
    assert param_space(spec) and spec.kind().accepts(spec.base_config())
    if spec.search.algorithm == "optuna":
        assert type(search_algorithm(spec)).__name__ == "OptunaSearch"
    if spec.scheduler.name == "asha":
        assert type(scheduler(spec)).__name__ == "AsyncHyperBandScheduler"


# --- sweeps on a real local Ray -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run(spec_path: Path, sweep_dir: Path, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    from distst.sweep.results import write_results
    from distst.sweep.runner import run_sweep

    spec = load_sweep(spec_path)
    outcome = run_sweep(spec, sweep_dir, resume=resume)
    return outcome, write_results(spec, outcome.results, sweep_dir)


@pytest.fixture(scope="module")
def four_trials(ray_local, tmp_path_factory):
    """4 single-process trials, 2 at a time, W&B offline; trial 1 fails once right after its level 0."""
    base = tmp_path_factory.mktemp("sweep4")
    spec = write_sweep(base / "four.yaml", {"tracking.backend": "wandb", "tracking.mode": "offline"},
                       space={"prune.rate": {"grid": [0.2, 0.5]}, "prune.rewind_step": {"grid": [0, 2]}},
                       resources={"cpus": 1}, concurrency=2, max_failures=1,
                       fault_injection={"fail_once_after_level": 0, "trials": [1]})
    started = time.monotonic()
    outcome, written = run(spec, base / "out")
    return outcome, written, base / "out", time.monotonic() - started


@RAY
@pytest.mark.slow
def test_four_tiny_imp_trials_two_at_a_time(four_trials) -> None:
    outcome, written, sweep_dir, _ = four_trials
    assert not outcome.interrupted
    rows = results_csv(sweep_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {(r["prune.rate"], r["prune.rewind_step"]) for r in rows} == {("0.2", "0"), ("0.2", "2"), ("0.5", "0"),
                                                                         ("0.5", "2")}
    best = [float(r["extreme_sparsity"]) for r in rows]
    assert best == sorted(best, reverse=True), "best (highest extreme sparsity) first"
    spans = []
    for row in rows:
        run_dir = Path(row["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert [lv["level"] for lv in summary["levels"]] == [0, 1] and summary["complete"]
        assert summary["rate"] == float(row["prune.rate"]) and summary["rewind_step"] == int(row["prune.rewind_step"])
        assert (run_dir / "report" / "report.md").is_file()
        assert list((run_dir / "wandb").glob("offline-run-*")), "each trial logs W&B offline"
        spans.append((attempts(run_dir)[0]["time"], (run_dir / "summary.json").stat().st_mtime))
    overlapping = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlapping == 2, f"2 trials at a time: {spans}"
    assert (sweep_dir / "results.md").read_text().count("\n| ") == 4
    assert written["plot"] is not None and written["plot"].stat().st_size > 0
    assert list((sweep_dir / "wandb").glob("offline-run-*")), "the results table goes to W&B too"


@RAY
@pytest.mark.slow
def test_a_failed_trial_is_retried_from_its_checkpoint_and_listed_once(four_trials) -> None:
    _, _, sweep_dir, _ = four_trials
    rows = [r for r in results_csv(sweep_dir) if r["trial"].endswith("_00001")]
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["attempts"] == "2"
    run_dir = Path(rows[0]["run_dir"])
    first, retry = attempts(run_dir)
    assert first["resumed_after_level"] == -1 and retry["resumed_after_level"] == 0, "retried from the level-0 checkpoint"
    assert record_path(run_dir, "level_0").stat().st_mtime < retry["time"], "level 0 was not trained again"
    assert (run_dir / ".fault_injected").is_file()


@RAY
@pytest.mark.slow
@pytest.mark.distributed
def test_asha_early_stops_a_two_process_trial_and_frees_its_workers(ray_local, tmp_path: Path) -> None:
    """Each trial is a 2-process gloo IMP run through Ray Train's TorchTrainer. ASHA stops the untrained
    (lr ~ 0) trial after level 0. Ray 2.60 would keep the stopped trial's Train placement group (both CPUs)
    reserved, so a next trial's workers could never start: the sweep must end with every CPU free and a new
    2-worker group must fit at once."""
    spec = write_sweep(tmp_path / "asha.yaml", space={"train.lr": {"grid": [1e-3, 1e-12]}},
                       objective={"metric": "total_error", "mode": "min"},
                       scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                       resources={"cpus": 2, "processes": 2}, concurrency=1, max_failures=0)
    outcome, written = run(spec, tmp_path / "out")
    statuses = {row["trial"].rsplit("_", 1)[-1]: row["status"] for row in written["rows"]}
    assert statuses == {"00000": "done", "00001": "stopped early"}, written["rows"]
    for row in written["rows"]:
        level_0 = json.loads((Path(row["run_dir"]) / "level_0" / "summary.json").read_text())
        assert level_0["world_size"] == 2
        assert (Path(row["run_dir"]) / "ray_train_placement_group").is_file()
    ray = ray_local
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    assert ray.available_resources().get("CPU") == pytest.approx(2.0), "a placement group is still reserved"
    group = ray.util.placement_group([{"CPU": 1.0}] * 2)
    try:
        assert group.wait(timeout_seconds=patience(10)), "the next trial's 2 workers could not start"
    finally:
        ray.util.remove_placement_group(group)


def _poison_tune_state(state: Path, marker: Path) -> list[Path]:
    """Every file of Tune's state a resume could unpickle, replaced (or planted) with a pickle whose loading
    creates ``marker``; the checkpoint pointers get one too."""
    poison = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    targets = [p for p in state.iterdir() if p.is_file()] + list(state.rglob("*.pkl")) + list(state.rglob("*.json"))
    targets += [state / "searcher-state-2099-01-01_00-00-00.pkl", next(state.glob("*/")) / "error.pkl"]
    for path in targets:
        path.write_bytes(poison)
    return targets


@RAY
@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_and_resumes_from_its_sealed_state(tmp_path: Path) -> None:
    """`distst tune` on its own local Ray is SIGKILLed while trial 1 runs: none of its Ray processes stay
    (the reaper ends them), and `--resume` continues from the state it sealed; finished trial 0 is never
    trained again (Tune saves its state every few seconds, so a trial that finished just before the kill may be
    restarted: it finds its run finished). That resume is interrupted (SIGINT: exit 75, the state saved), every
    file of Tune's state is then poisoned, and the next `--resume` still finishes from the sealed copy without
    unpickling any of them and without starting trial 0 again. A sealed copy edited by someone else is refused
    in one line."""
    import psutil

    spec = write_sweep(tmp_path / "resume.yaml", space={"prune.rate": {"grid": [0.2, 0.5]}},
                       resources={"cpus": 1}, concurrency=1, max_failures=0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "distst", "tune", str(spec), "--out", str(out), "--cpus", "2"]
    env = {k: v for k, v in subprocess_env().items() if k != "RAY_ADDRESS"}

    def start_until(attempt_lines: int, resume: bool) -> subprocess.Popen:
        proc = subprocess.Popen([*command, *(["--resume"] if resume else [])], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + patience(300)
        while not (paths := list(out.glob("trials/*_00001/tune_attempts.jsonl"))) or \
                len(paths[0].read_text().splitlines()) < attempt_lines:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
            time.sleep(0.2)
        return proc

    proc = start_until(1, resume=False)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in p.name() for p in ray_processes), [p.name() for p in ray_processes]
    proc.kill()
    proc.communicate()
    _, alive = psutil.wait_procs(ray_processes, timeout=patience(120))
    assert not alive, f"Ray processes of the killed driver are still running: {alive}"
    assert "ended without stopping Ray" in (out / "reaper.log").read_text()
    finished = next(out.glob("trials/*_00000"))
    finished_at = [record_path(finished, level).stat().st_mtime_ns for level in ("level_0", "level_1")]

    proc = start_until(2, resume=True)
    proc.send_signal(signal.SIGINT)  # what Ctrl+C (or the Slurm script, on preemption) sends
    output = proc.communicate(timeout=patience(120))[0]
    assert proc.returncode == 75, output[-4000:]
    started = len(attempts(finished))

    marker = tmp_path / "pwned"
    _poison_tune_state(out / "tune", marker)
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=patience(300))
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert not marker.exists(), "a poisoned file of the sweep state was unpickled"
    rows = results_csv(out)
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    assert len(attempts(finished)) == started, "the finished trial was started again"
    assert [record_path(finished, level).stat().st_mtime_ns for level in ("level_0", "level_1")] == finished_at, \
        "a level of the finished trial was trained again"
    assert len(attempts(next(out.glob("trials/*_00001")))) == 3

    sealed = out / "tune.sealed.json"
    sealed.write_text(sealed.read_text().replace('"hmac": "', '"hmac": "0'))
    refused = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=patience(120))
    assert refused.returncode == 2 and "refusing to unpickle its Tune state" in refused.stderr, refused.stderr[-4000:]
    assert not marker.exists()


# --- Slurm --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # with the other Slurm tests: one cluster per worker
def test_slurm_tune_script_runs_a_sweep_on_ray_started_in_the_allocation(slurm_cluster, tmp_path: Path) -> None:
    """slurm/tune.sh on the dev cluster: Ray started through srun with Slurm's CPU count, the sweep run on the
    head, Ray stopped at the end (no Ray process of the job left)."""
    spec = write_sweep(tmp_path / "slurm_sweep.yaml", space={"prune.rate": {"grid": [0.2, 0.5]}},
                       resources={"cpus": 1}, concurrency=2, max_failures=0)
    env = {"DISTST_SWEEP": str(spec), "DISTST_SWEEP_DIR": str(tmp_path / "out"),
           "DISTST_VENV": str(Path(sys.executable).parents[1]), "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
           "TQDM_DISABLE": "1", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    job = slurm_cluster.sbatch(REPO / "slurm" / "tune.sh", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2",
                               "--gpus-per-node=0", "--time=10", f"--output={tmp_path}/slurm-%j.out", env=env,
                               cwd=REPO, timeout=patience(400))
    output = job.output()
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), output[-6000:]
    assert "Ray: 1 node(s), 2 CPUs, 0 GPUs" in output
    assert sorted(r["status"] for r in results_csv(tmp_path / "out")) == ["done", "done"]
    ray_tmp = f"/tmp/ray_distst_{job.job_id}"
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of the job are still running: {left}"
