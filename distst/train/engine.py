"""DeepSpeed set-up: process group from the usual launcher variables, the engine, safe checkpoint loading.

Ranks come from torchrun / the ``deepspeed`` launcher (RANK, LOCAL_RANK, WORLD_SIZE) or from Slurm's srun
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS); a plain ``python`` process is a world of one. NCCL on GPUs,
gloo on CPUs (DeepSpeed's accelerator chooses). A torch optimizer is passed in, so no C++/CUDA op has to be
compiled for the optimizer on a CPU machine.
"""

from __future__ import annotations

import atexit
import datetime
import difflib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from .. import masters
from ..config import DEFAULT_COLLECTIVE_TIMEOUT_S, Config, ConfigError

_SLURM_TO_TORCH = {"RANK": "SLURM_PROCID", "LOCAL_RANK": "SLURM_LOCALID", "WORLD_SIZE": "SLURM_NTASKS"}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_process_env() -> None:
    """Map Slurm's task variables to torch's, or make a world of one, so DeepSpeed needs no MPI discovery.

    Once per process, by its entry point (the CLI, a Tune trial, a test session): DeepSpeed reads these
    variables, and ``train()`` never edits ``os.environ`` itself (it may run in a thread). Idempotent.
    """
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        for torch_name, slurm_name in _SLURM_TO_TORCH.items():
            os.environ[torch_name] = os.environ[slurm_name]
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("running under srun without MASTER_ADDR/MASTER_PORT: the batch script must export "
                               "them (see slurm/imp_adain.sh)")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("LOCAL_RANK", "0")
    # cuBLAS reads it once, at its start: deterministic CUDA runs need it, and it costs others next to nothing.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def _destroy_process_group() -> None:
    """Tear the process group down before the interpreter does: left to interpreter shutdown, gloo's threads can
    outlive the objects they use and a finished process aborts ("terminate called without an active exception",
    seen under load when a 2-rank run ended)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def setup_distributed(timeout_s: float | None = None) -> DistInfo:
    """Initialise (once) the process group DeepSpeed uses and return this process's place in it.

    ``timeout_s`` (``train.collective_timeout``; default ``DEFAULT_COLLECTIVE_TIMEOUT_S``): how long a collective
    waits for a rank that does not come (hung, stopped) before it fails on every rank that waits. Given for a group
    that is already up, it becomes that group's timeout.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    missing = [name for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing and not torch.distributed.is_initialized():
        raise RuntimeError(f"{', '.join(missing)} not set: call distst.train.engine.prepare_process_env() once in "
                           "this process before training (the distst CLI and Tune trials do)")
    deepspeed.utils.logger.setLevel(logging.WARNING)  # its per-init INFO lines drown distst's own progress
    accelerator = get_accelerator()
    if not torch.distributed.is_initialized():
        seconds = DEFAULT_COLLECTIVE_TIMEOUT_S if timeout_s is None else timeout_s
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), auto_mpi_discovery=False,
                                   verbose=False, timeout=datetime.timedelta(seconds=seconds))
        atexit.register(_destroy_process_group)
    elif timeout_s is not None:
        set_collective_timeout(timeout_s)
    local_rank = int(os.environ["LOCAL_RANK"])
    if accelerator.device_name() != "cpu":
        index = device_index(local_rank, accelerator.device_count(), accelerator.current_device())
        accelerator.set_device(index)
        device = torch.device(accelerator.device_name(index))
    else:
        device = torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), local_rank, torch.distributed.get_world_size(), device)


def set_collective_timeout(seconds: float) -> None:
    """Make ``seconds`` the timeout of every process group's collectives (when one is up): the default group's and
    those made from it (DeepSpeed's clone of the world group carries the gradient all-reduce), which
    ``new_group`` starts at torch's default of 30 minutes."""
    if torch.distributed.is_initialized():
        timeout = datetime.timedelta(seconds=seconds)
        for group in list(torch.distributed.distributed_c10d._world.pg_map):
            if not torch.distributed.distributed_c10d._rank_not_in_group(group):
                torch.distributed.set_timeout(timeout, group)


def device_index(local_rank: int, visible: int, current: int) -> int:
    """The accelerator this process trains on, given how many it sees and which one is current.

    - One visible device (Slurm's ``--gpus-per-task=1`` / ``--gpu-bind``, or ``CUDA_VISIBLE_DEVICES`` set per
      process): device 0, whatever the local rank ("invalid device ordinal" otherwise for local rank >= 1).
    - A launcher already chose one (Ray Train sets the current device of each worker): keep it, so two workers
      never share a device.
    - Else (torchrun, srun with every GPU visible): the local rank's device.
    """
    if visible < 1:
        raise RuntimeError("the accelerator reports no visible device: check CUDA_VISIBLE_DEVICES and the job's "
                           "GPU request")
    if visible == 1:
        return 0
    if current != 0:
        return current
    if local_rank >= visible:
        raise RuntimeError(f"local rank {local_rank} has no device of its own: {visible} are visible; start at most "
                           f"{visible} processes per node (--nproc / --ntasks-per-node)")
    return local_rank


def _top_level_deepspeed_keys() -> set[str]:
    """Top-level keys DeepSpeed understands: the string constants its config modules define."""
    from deepspeed.runtime import constants

    keys = {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str)}
    return keys | {"zero_optimization", "bf16", "fp16", "amp", "activation_checkpointing", "flops_profiler",
                   "tensorboard", "wandb", "csv_monitor", "comms_logger", "compression_training", "aio",
                   "autotuning", "data_efficiency", "checkpoint", "monitor_config", "elasticity", "nebula",
                   "pipeline", "curriculum_learning", "compile", "timers", "torch_autocast"}


# Set through typed keys of the `deepspeed` section, never through `deepspeed.extra`.
_MANAGED = {"train_micro_batch_size_per_gpu": "data.batch_size",
            "gradient_accumulation_steps": "deepspeed.gradient_accumulation_steps",
            "gradient_clipping": "deepspeed.gradient_clipping", "bf16": "deepspeed.precision",
            "fp16": "deepspeed.precision", "optimizer": "train.lr (distst passes a torch Adam)",
            "communication_data_type": "deepspeed.communication_dtype",
            "scheduler": "train.lr_decay", "train_batch_size": "data.batch_size"}


_warned_cpu_bf16 = False


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """fp32, bf16 or fp16 for this job on ``device``. bf16 on the CPU is allowed (with a warning): it is slow,
    but it runs the very code path a GPU run takes, so CI can test it."""
    global _warned_cpu_bf16
    precision = cfg.deepspeed.precision
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("deepspeed.precision=fp16 needs a GPU; on the CPU use fp32, auto, or bf16 (for testing)")
    if precision == "bf16" and device.type == "cpu" and not _warned_cpu_bf16:
        _warned_cpu_bf16 = True
        logging.getLogger("distst").warning(
            "deepspeed.precision=bf16 on the CPU: meant for testing the path GPU runs take (its speed depends "
            "on the CPU's bf16 support)")
    return precision


def deepspeed_config(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config dict for a job; unknown or managed keys in ``deepspeed.extra`` are refused."""
    known = _top_level_deepspeed_keys()
    for key in cfg.deepspeed.extra:
        if key in _MANAGED:
            raise ConfigError(f"deepspeed.extra.{key}: set it through {_MANAGED[key]} instead")
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=3)
            raise ConfigError(f"deepspeed.extra.{key}: not a DeepSpeed config key"
                              + (f" (did you mean {', '.join(near)}?)" if near else ""))
    precision = resolve_precision(cfg, device)
    extra = dict(cfg.deepspeed.extra)
    zero = {**extra.pop("zero_optimization", {}), "stage": cfg.deepspeed.zero_stage}
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.deepspeed.gradient_accumulation_steps,
        "gradient_clipping": cfg.deepspeed.gradient_clipping,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # Gradients are all-reduced in this dtype (DeepSpeed's default is the training dtype: bf16 sums lose
        # bits, and ZeRO-0 and ZeRO-1 then gave different results).
        "communication_data_type": cfg.deepspeed.communication_dtype,
        "steps_per_print": 10**12,  # distst logs progress itself
        "wall_clock_breakdown": False,
        **extra,
    }


def take_save_failure(engine: Any) -> BaseException | None:
    """The write failure this rank's ``engine.save_checkpoint`` met (see ``_safe_checkpoint_engine``), cleared; None
    when its files were all written."""
    checkpoints = getattr(engine, "checkpoint_engine", None)
    failure = getattr(checkpoints, "failure", None)
    if failure is not None:
        checkpoints.failure = None
    return failure


def deepspeed_state_types() -> list[type]:
    """The classes DeepSpeed's checkpoint files hold besides tensors and plain data (loaded with weights_only)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _safe_checkpoint_engine(config_params: Any) -> Any:
    """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True`` and DeepSpeed's own state types.

    A failing write (a full disk on one rank) is recorded rather than raised, and the checkpoint's later writes
    on this rank are skipped: ``save_checkpoint`` then runs its collectives on every rank as usual, and the
    caller agrees on the failure with the other ranks (``take_save_failure``; ``checkpoint.save``). An exception
    out of the middle of ``save_checkpoint`` would leave the other ranks waiting in its barrier."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from ..diskfull import DiskFull, save_torch, writing

    allowed = deepspeed_state_types()

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        failure: BaseException | None = None

        def makedirs(self, path: str, exist_ok: bool = False) -> None:
            try:
                super().makedirs(path, exist_ok=exist_ok)
            except OSError as err:
                self.failure = self.failure or err

        def save(self, state_dict: Any, path: str) -> None:
            if self.failure is not None:
                return  # this checkpoint already failed on this rank
            try:
                with writing(path):  # a full disk: DiskFull naming the file and its filesystem
                    save_torch(state_dict, path, _use_new_zipfile_serialization=self.zipfile_serialization)
            except (OSError, RuntimeError, DiskFull) as err:
                self.failure = err

        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeTorchCheckpointEngine(config_params)


def initialize(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> Any:
    """Wrap ``model`` in a DeepSpeed engine with the job's config; errors name the config section."""
    import deepspeed

    ds_config = deepspeed_config(cfg, device)
    set_collective_timeout(cfg.train.collective_timeout)  # the group may have been started before the config
    initial: dict[int, torch.Tensor] = {}
    if ds_config["bf16"]["enabled"] or ds_config["fp16"]["enabled"]:
        masters.keep_frozen_fp32(model)
        if cfg.deepspeed.zero_stage < 3:  # DeepSpeed builds its masters from the rounded module: keep the fp32
            initial = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
    except (ValueError, AssertionError, TypeError) as err:  # DeepSpeed's own config checks
        raise ConfigError(f"DeepSpeed rejected the config built from the `deepspeed` section: {err}") from None
    engine.checkpoint_engine = _safe_checkpoint_engine(engine._config)
    set_collective_timeout(cfg.train.collective_timeout)  # also for the groups DeepSpeed has just made
    masters.link_masters(engine)  # ZeRO-0 bf16: the fp32 clones DeepSpeed's API does not reach
    masters.drop_warm_up_step(engine)  # ZeRO-0 bf16: Adam's bias correction as in every other configuration
    for param in engine.module.parameters():  # the masters start from the exact fp32 weights (a rewind point)
        if id(param) in initial:
            masters.set_fp32_master(param, initial[id(param)])
    return engine


def check_deterministic(cfg: Config, device: torch.device) -> None:
    """``train.deterministic`` on CUDA needs cuBLAS's fixed workspace, set before cuBLAS starts: the process set-up
    sets it (``prepare_process_env``); one line if someone set another value."""
    if not cfg.train.deterministic or device.type != "cuda":
        return
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        raise ConfigError("train.deterministic=true on CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) in the "
                          f"environment before the run starts (it is {os.environ.get('CUBLAS_WORKSPACE_CONFIG')!r})")
