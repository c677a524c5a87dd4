"""The one preflight: what ``distst check`` reports and what ``train`` / ``imp`` run before any process starts.

Every check is cheap (file metadata, tar headers, shard manifests, the stored config) and none writes
anything, so a job that fails here leaves no run directory content behind. Each problem is one readable line
naming the key to change.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from . import registry
from .config import Config, ConfigError
from .models import model_class

REMOTE_PREFIXES = ("pipe:", "http:", "https:", "s3:", "gs:")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")


def _shard_problems(key: str, pattern: str) -> list[str]:
    from .data.sources import expand_pattern
    from .errors import DataError

    try:
        urls = expand_pattern(pattern)
    except DataError as err:
        return [f"{key}: {err}"]
    if not urls:
        return [f"{key}: shard pattern {pattern!r} names no shards"]
    paths = [url.removeprefix("file:") for url in urls]
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return [f"{key}: shard {missing[0]} does not exist{more}; build shards with `distst shards build` "
                "or point the job at them (e.g. DISTST_CONTENT / DISTST_STYLE in batch scripts)"]
    empty = [path for path in paths if _empty_tar(path)]
    if empty:
        return [f"{key}: shard {empty[0]} holds no samples; rebuild it with `distst shards build`"]
    return []


def _empty_tar(path: str) -> bool:
    """No bytes, or an end-of-archive (zero) block first: a tar without members."""
    with open(path, "rb") as f:
        return not f.read(512).strip(b"\0")


def _local(pattern: str | None) -> bool:
    return pattern is not None and not pattern.startswith(REMOTE_PREFIXES)


def _manifest_count(path: Path) -> int | None:
    """The sample count a shard manifest next to ``path`` records for it (None when no manifest lists it)."""
    import json

    for manifest in path.parent.glob("*.json"):
        try:
            entries = json.loads(manifest.read_text()).get("shards", [])
        except (OSError, ValueError, AttributeError):
            continue
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("file") == path.name and isinstance(entry.get("samples"), int):
                if entry.get("bytes") in (None, path.stat().st_size):  # a rebuilt shard's count is not the manifest's
                    return entry["samples"]
    return None


def _tar_count(path: Path) -> int:
    """Samples (keys with an image member) of a tar, from its headers only."""
    keys = set()
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            stem, _, ext = member.name.rpartition(".")
            if member.isreg() and ext.lower() in IMAGE_EXTENSIONS:
                keys.add(stem)
    return len(keys)


def samples_in(pattern: str) -> int:
    """How many samples the local shards of ``pattern`` hold: from their manifests, else a header scan."""
    from .data.sources import expand_pattern

    total = 0
    for url in expand_pattern(pattern):
        path = Path(url.removeprefix("file:"))
        count = _manifest_count(path)
        total += count if count is not None else _tar_count(path)
    return total


def _eval_problems(cfg: Config) -> list[str]:
    data = cfg.data
    found = []
    for key, pattern in (("data.eval_content", data.eval_content or data.content),
                         ("data.eval_style", data.eval_style or data.style)):
        if not _local(pattern):
            continue
        try:
            available = samples_in(pattern)
        except (OSError, tarfile.TarError) as err:
            found.append(f"{key}: {pattern} cannot be read ({err})")
            continue
        for needed_by, count in (("data.eval_pairs", data.eval_pairs), cfg.model.held_out_images(cfg)):
            if available < count:
                found.append(f"{needed_by}={count}: {key} ({pattern}) holds only {available} images; "
                             f"lower {needed_by} or give {key} more shards")
    return found


def _size_problems(cfg: Config) -> list[str]:
    model = model_class(cfg.model.name)
    found = []
    sizes = [("data.crop", cfg.data.crop)] + ([("data.eval_size", cfg.data.eval_size)] if cfg.data.eval_size else [])
    for key, size in sizes:  # an unset eval_size is the crop: one line for both
        if size % model.input_multiple or size < model.min_size:
            found.append(f"{key}={size}: {cfg.model.name} needs sizes of at least {model.min_size} that are "
                         f"multiples of {model.input_multiple}")
    return found


def _method_problems(cfg: Config) -> list[str]:
    zero3 = registry.method_record(cfg.prune.method).zero3_problem(cfg.deepspeed.zero_stage)  # the trainer's rule
    found = [zero3] if zero3 else []
    rewind = getattr(cfg.prune, "rewind_step", None)
    if rewind is not None and rewind > cfg.train.steps:
        found.append(f"prune.rewind_step={rewind} lies beyond train.steps={cfg.train.steps}")
    return found


def _model_file_problems(cfg: Config) -> list[str]:
    """``model.init_from`` and ``distill.teacher`` must be distst model files, read as training reads them."""
    from .errors import DiststError
    from .models.io import read_model_file

    found = []
    for key, path in (("model.init_from", cfg.model.init_from), ("distill.teacher", cfg.distill.teacher)):
        if not path:
            continue
        if not Path(path).exists():
            found.append(f"{key}: {path} does not exist")
            continue
        try:
            read_model_file(path)  # weights_only, as train and distillation read it
        except DiststError as err:
            found.append(f"{key}: {err}")
    return found


def launch_world_size(nproc: int | None = None) -> int | None:
    """How many processes the job runs as: those of the launch this process is part of (torchrun's WORLD_SIZE,
    srun's SLURM_NTASKS), else ``nproc`` (``--nproc``, which relaunches under torchrun); None when unknown."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ and "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_NTASKS"])  # as prepare_process_env maps them
    return nproc


def _world_size_problems(run_dir: Path, world_size: int, zero_stage: int) -> list[str]:
    """A resume with another world size than its newest checkpoint's re-splits the run where it can
    (``distst.train.elastic``); where it cannot (ZeRO-3, per-rank model state), one line before start-up (read from
    the manifest and rank 0's small file only). A finished step's checkpoints (a ``model.pt`` beside them) are
    never resumed, except the top-level run's (more train.steps)."""
    from .train import elastic
    from .train.checkpoint import complete_checkpoints, written_by

    roots = [run_dir / "checkpoints"] + [root for root in sorted(run_dir.glob("*/checkpoints"))
                                         if not (root.parent / "model.pt").is_file()]
    found = []
    for root in roots:
        for path in reversed(complete_checkpoints(root)):
            old_world = written_by(path)
            if old_world is None:
                continue  # a damaged manifest: the trainer falls back to an older checkpoint, or reports it
            problem = elastic.problem(path, old_world, world_size, zero_stage)
            if problem:
                found.append(problem)
            break
    return found


def _run_dir_problems(cfg: Config, run_dir: Path, resume_check: bool = True) -> list[str]:
    """The run directory must be (or become) a writable directory, and resumable with this config."""
    from .rundir import check_resume

    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"run directory {run_dir}: {existing} is not a directory (run.out_dir / run.root)"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"run directory {run_dir}: {existing} is not writable (run.out_dir / run.root)"]
    if existing == run_dir and resume_check:
        from .train.loop import with_init_plan  # the trainer compares the config with its model file's plan

        try:
            check_resume(with_init_plan(cfg), run_dir)
        except ConfigError as err:
            return [str(err)]
    return []


def problems(cfg: Config, run_dir: Path | None = None, world_size: int | None = None) -> list[str]:
    """Readable reasons the job would fail at start (missing or empty shards, bad brace patterns, too few
    evaluation images, missing weight files, unreadable model files, impossible sizes, a method the ZeRO stage
    cannot run, an unwritable run directory or one holding a run of another config or of another world size);
    empty when it can start. ``world_size``: of the launch (default ``launch_world_size()``; unknown: not
    checked)."""
    found: list[str] = []
    data = cfg.data
    for key, pattern in (("data.content", data.content), ("data.style", data.style),
                         ("data.eval_content", data.eval_content), ("data.eval_style", data.eval_style)):
        if _local(pattern):
            found += _shard_problems(key, pattern)
    if not found:  # counting evaluation images needs readable shards
        found += _eval_problems(cfg)
    for key in registry.model_record(cfg.model.name).weight_keys:
        path = getattr(cfg.model, key)
        if path and not Path(path).is_file():
            found.append(f"model.{key}: {path} does not exist (distst never downloads weights; see README)")
    model_files = _model_file_problems(cfg)
    found += model_files
    found += _size_problems(cfg)
    found += _method_problems(cfg)
    run_dir = run_dir if run_dir is not None else cfg.run_dir()
    found += cfg.prune.input_problems(cfg, run_dir)  # files the method reads (a transferred ticket's mask)
    found += _run_dir_problems(cfg, run_dir, resume_check=not model_files)  # that check reads model.init_from
    world_size = world_size if world_size is not None else launch_world_size()
    if world_size is not None and run_dir.is_dir():
        found += _world_size_problems(run_dir, world_size, cfg.deepspeed.zero_stage)
    return found


def require(cfg: Config, job: str, run_dir: Path | None = None, world_size: int | None = None) -> None:
    """Raise a ``ConfigError`` listing every problem (one line when there is one)."""
    found = problems(cfg, run_dir, world_size)
    if len(found) == 1:
        raise ConfigError(f"{job} cannot start: {found[0]}")
    if found:
        raise ConfigError(f"{job} cannot start:\n  " + "\n  ".join(found))
