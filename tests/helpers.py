"""Tiny, fast job settings for tests, and running distst in a subprocess as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from distst.config import Config, build_config
from distst.data.bundled import sample_location
from distst.presets import as_overrides, tiny_settings
from distst.stop import StopRequest
from distst.train import Method, StepInputs, TrainContext

REPO = Path(__file__).resolve().parents[1]
#: How many times its quiet-machine figure a test waits for an event (a process's exit, a log line, a job state)
#: before it fails: a cap that a passing test never reaches, so it costs nothing there. Two ``make test`` side by
#: side on 2 cores ran about 4x slower than one; ``DISTST_TEST_PATIENCE`` sets it for a machine slower still.
PATIENCE = float(os.environ.get("DISTST_TEST_PATIENCE", "4"))


def patience(seconds: float) -> float:
    """The cap for a wait on an event whose quiet-machine cap is ``seconds``."""
    return seconds * PATIENCE

SAMPLE = sample_location()
#: A slimmed AdaIN plan at the tiny width (1/8): some encoder and mirrored decoder layers narrower.
SLIM_ADAIN = {"encoder": {"conv3_1": 20, "conv3_2": 12, "conv4_1": 40},
              "decoder": {"conv3_4": 12, "conv3_1": 20, "conv1_1": 5}}


def tiny_overrides(out_dir: Path, **extra: object) -> list[str]:
    """A 1/8-width model on 32 px crops of the bundled sample shards, a few steps, no tracking (``distst.presets``)."""
    settings = tiny_settings(**{"train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 1,
                                "train.lr": 1e-3, "tracking.image_every": 1000, "run.out_dir": str(out_dir)})
    settings.update({k.replace("__", "."): v for k, v in extra.items()})
    return as_overrides(settings)


def tiny_config(out_dir: Path, **extra: object) -> Config:
    return build_config({"run": {"name": "test"}}, tiny_overrides(out_dir, **extra))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="offline", WANDB_SILENT="true", TQDM_DISABLE="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the pytest process's own world of one must not leak into children
    return env


def distst_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distst", *args]


def run_distst(*args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``distst ARGS`` as a user runs it; ``timeout``: the cap (default ``patience(300)``)."""
    proc = subprocess.run(distst_command(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=patience(300) if timeout is None else timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"distst {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def write_job(path: Path, model: str = "adain") -> Path:
    path.write_text(f"model:\n  name: {model}\n")
    return path


def on_int8_grid(weight: torch.Tensor) -> bool:
    """Every output channel's values are integer multiples of max|w| / 127."""
    flat = weight.flatten(1)
    scale = flat.abs().amax(dim=1, keepdim=True) / 127
    steps = flat / scale
    return bool(torch.allclose(steps, steps.round(), atol=1e-3)) and float(steps.abs().max()) <= 127 + 1e-3


class StopAt(Method):
    """Asks the run to checkpoint and stop after optimizer step ``step`` (None: never), as a stop signal would."""

    def __init__(self, step: int | None, request: StopRequest) -> None:
        self.step, self.request = step, request

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict:
        # During step ``step`` (``ctx.step`` counts finished steps): the loop reads requests once per step, in
        # the collective at the step's end, so a signal arriving while the step runs stops it at that step.
        if self.step is not None and ctx.step == self.step - 1:
            self.request.set("test")
        return {}


def write_image(path: Path, width: int = 40, height: int = 36, seed: int = 0) -> Path:
    """A random RGB image of ``width`` x ``height`` (seeded), in the format of ``path``'s suffix."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def read_image(path: Path) -> torch.Tensor:
    """An image file as a 3 x H x W tensor in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
