"""Run any channel-pruning schedule end to end, resumably, and package the slimmed model.

Run directory::

    loss_vgg.pth                  the frozen loss VGG of every stage (written when the job names no vgg_weights)
    00_dense/                     a train stage: model.pt, summary.json, checkpoints, metrics.jsonl ...
    01_prune_1/                   a prune stage: model.pt (slimmed), channels.json (kept channels), stage.json
    02_finetune_1/ ...
    slim/model.pt, slim/summary.json   the final slimmed model (``distst slim``)
    summary.json, report/report.md

Each stage directory gets ``stage.json`` when it is done; re-running skips done stages and a train stage
resumes from its last checkpoint (``train`` does that). Every train stage starts from the previous stage's
model file (``model.init_from``), so a slimmed plan trains as a plain, smaller dense model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ... import atomic
from ...config import Config, ConfigError, with_overrides
from ...data import eval_pairs
from ...evaluate import evaluate
from ...models import DiststModel, param_counts
from ...models.complexity import macs
from ...models.io import load_model, save_model
from ...models.vgg import vgg_normalised_layers
from ...stop import StopRequest
from ...train import train
from ...train.engine import setup_distributed
from .methods import ChannelSection, PruneInputs, PruneStage, TrainStage
from .surgery import slim, widths

STAGE_FILE = "stage.json"
CHANNELS_FILE = "channels.json"
LOSS_VGG = "loss_vgg.pth"
SLIM_DIR = "slim"


@dataclass
class ChannelResult:
    stopped: bool
    summary: dict[str, Any]


def validate(cfg: Config) -> None:
    if not isinstance(cfg.prune, ChannelSection):
        from ... import registry

        channel = sorted(k for k, v in registry.METHOD_SECTIONS.items() if issubclass(v, ChannelSection))
        raise ConfigError(f"distst prune needs a channel-pruning method, prune.method={' | '.join(channel)} "
                          f"(got {cfg.prune.method}; lottery tickets run with distst imp)")
    if not type(cfg.model).model_class.supports_channel_pruning():
        raise ConfigError(f"{cfg.model.name} declares no channel layers (channel_layers, coupling_forward): "
                          "channel pruning cannot run on it")


def write_random_loss_vgg(path: Path, width: float, seed: int) -> Path:
    """A He-initialised VGG in the reference file layout: without pretrained weights, every stage's loss VGG
    (and the dense encoder's start) is this one file, so errors of different stages are comparable."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        full = nn.Sequential(*vgg_normalised_layers(width))
        for module in full.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    return atomic.torch_save(full.state_dict(), path)


def _with_loss_vgg(cfg: Config, run_dir: Path, is_main: bool) -> Config:
    if cfg.model.vgg_weights:
        return cfg
    path = run_dir / LOSS_VGG
    if is_main and not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_random_loss_vgg(path, cfg.model.width, cfg.train.seed)
    dist.barrier()
    return with_overrides(cfg, {"model.vgg_weights": str(path)})


def _describe(model: DiststModel, size: int) -> dict[str, Any]:
    return {"widths": widths(model), "params": param_counts(model), "macs": macs(model, size)}


def _load(cfg: Config, path: Path) -> DiststModel:
    model, _ = load_model(path, vgg_weights=cfg.model.vgg_weights)
    return model


def _errors(cfg: Config, model: DiststModel) -> dict[str, float]:
    content, style = eval_pairs(cfg.data)
    return evaluate(model, model.loss_network(), content, style)


def _prune(cfg: Config, stage: PruneStage, stage_dir: Path, current: Path, trained_dir: Path,
           dense_widths: dict[str, dict[str, int]]) -> dict[str, Any]:
    model = _load(cfg, current)

    def images() -> torch.Tensor:
        return torch.cat(eval_pairs(cfg.data))

    selection = stage.select(PruneInputs(cfg, model, trained_dir, dense_widths, images))
    slimmed = slim(model, selection)
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(stage_dir / CHANNELS_FILE, {"parent": str(current), "kept": selection})
    save_model(slimmed, stage_dir / "model.pt")
    return {"before_finetune": _errors(cfg, slimmed)}


def run_channel_pruning(cfg: Config, run_dir: Path, *, stop: StopRequest | None = None,
                        on_stage: Callable[[dict[str, Any]], None] | None = None) -> ChannelResult:
    """Run (or resume) every stage of ``cfg.prune``'s schedule in ``run_dir``; then slim, summarise, report.

    ``on_stage`` is called on rank 0 with each finished stage's record (what a Tune trial reports).
    """
    validate(cfg)
    info = setup_distributed()
    cfg = _with_loss_vgg(cfg, run_dir, info.is_main)
    size = cfg.data.eval_size or cfg.data.crop
    group = cfg.tracking.group or f"{cfg.run.name or run_dir.name}-{run_dir.name}"
    current = Path(cfg.model.init_from) if cfg.model.init_from else None
    trained_dir = run_dir
    records: list[dict[str, Any]] = []
    for index, stage in enumerate(cfg.prune.schedule(cfg)):
        stage_dir = run_dir / f"{index:02d}_{stage.name}"
        done = stage_dir / STAGE_FILE
        if not done.is_file():
            record: dict[str, Any] = {"index": index, "stage": stage.name}
            if isinstance(stage, TrainStage):
                # Each stage its own data order (a fine-tuning stage does not replay the dense stage's batches).
                overrides: dict[str, Any] = {"train.steps": stage.steps, "data.seed": cfg.data.seed + index}
                if current is not None:
                    overrides["model.init_from"] = str(current)
                method = stage.method(stage_dir) if stage.method else None
                result = train(with_overrides(cfg, overrides), stage_dir, method,
                               run_name=f"{cfg.run.name or run_dir.name}/{stage.name}", run_group=group, stop=stop)
                if result.stopped:
                    return ChannelResult(stopped=True, summary={})
                record.update(kind="train", steps=stage.steps, errors=result.summary["final"])
            elif info.is_main:
                assert current is not None and records, "a schedule starts with a train stage"
                record.update(kind="prune",
                              **_prune(cfg, stage, stage_dir, current, trained_dir, records[0]["widths"]))
            dist.barrier()
            if info.is_main:
                record.update(_describe(_load(cfg, stage_dir / "model.pt"), size))
                atomic.write_json(done, record)
            dist.barrier()
        record = json.loads(done.read_text())
        records.append(record)
        if record["kind"] == "train":
            trained_dir = stage_dir
        current = stage_dir / "model.pt"
        if on_stage is not None and info.is_main:
            on_stage(record)
    summary = channel_summary(cfg, run_dir, records)
    if info.is_main:
        atomic.write_json(run_dir / "summary.json", summary)
        write_slim(run_dir)
        from .report import publish

        publish(cfg, run_dir, summary, group)
    dist.barrier()
    return ChannelResult(stopped=False, summary=summary)


def _fraction_removed(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                      keys: list[tuple[str, str]] | None = None) -> float:
    """Fraction of the channels of ``keys`` (default: every channel layer) removed."""
    keys = keys if keys is not None else [(g, n) for g, layers in before.items() for n in layers]
    total = sum(before[g][n] for g, n in keys)
    return 1.0 - sum(after[g][n] for g, n in keys) / total if total else 0.0


def channel_summary(cfg: Config, run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: widths, parameters and MACs per group before and after, E of every stage, and each
    pruning step's E before and after its fine-tuning."""
    dense, final = records[0], records[-1]
    steps = []
    for i, record in enumerate(records):
        if record["kind"] == "prune":
            after = next((r for r in records[i + 1:] if r["kind"] == "train"), None)
            steps.append({"stage": record["stage"], "widths": record["widths"],
                          "params": record["params"]["total"], "macs": record["macs"]["total"],
                          "total_error_before_finetune": record["before_finetune"]["total_error"],
                          "total_error_after_finetune": after["errors"]["total_error"] if after else None})
    final_errors = next((r["errors"] for r in reversed(records) if r["kind"] == "train"), {})
    return {
        "model": cfg.model.name, "method": cfg.prune.method,
        "settings": cfg.prune.model_dump(mode="json"),
        "eval_size": cfg.data.eval_size or cfg.data.crop, "eval_pairs": cfg.data.eval_pairs,
        "dense": {k: dense[k] for k in ("widths", "params", "macs")} | {"errors": dense["errors"]},
        "final": {k: final[k] for k in ("widths", "params", "macs")} | {"errors": final_errors},
        "channels_removed": _fraction_removed(dense["widths"], final["widths"]),
        "scope": [f"{g}.{n}" for g, n in cfg.prune.scope(cfg)],
        "channels_removed_in_scope": _fraction_removed(dense["widths"], final["widths"], cfg.prune.scope(cfg)),
        "params_removed": 1.0 - final["params"]["total"] / dense["params"]["total"],
        "macs_speedup": dense["macs"]["total"] / final["macs"]["total"],
        "pruning_steps": steps,
        "stages": [{k: r.get(k) for k in ("index", "stage", "kind", "steps")} |
                   {"total_error": (r.get("errors") or r.get("before_finetune") or {}).get("total_error"),
                    "params": r["params"]["total"], "macs": r["macs"]["total"]} for r in records],
        "slim_model": f"{SLIM_DIR}/model.pt",
    }


def stage_records(run_dir: Path) -> list[dict[str, Any]]:
    """The finished stages' records, in order."""
    files = sorted(run_dir.glob(f"[0-9][0-9]_*/{STAGE_FILE}"))
    return [json.loads(p.read_text()) for p in files]


def write_slim(run_dir: Path) -> Path:
    """``slim/model.pt`` from the run's last finished stage: a prune stage's selection is applied to its parent
    again (the surgery is deterministic), a train stage's model (scales folded, plan narrowed) is taken as is;
    ``slim/summary.json`` beside it holds the run's summary (or, mid-run, the stage's record)."""
    run_dir = Path(run_dir)
    records = stage_records(run_dir)
    if not records:
        raise FileNotFoundError(f"{run_dir} has no finished stage (no NN_<stage>/{STAGE_FILE}): "
                                "is it a distst prune run directory?")
    last = records[-1]
    last_dir = run_dir / f"{last['index']:02d}_{last['stage']}"
    out = run_dir / SLIM_DIR
    out.mkdir(exist_ok=True)
    if last["kind"] == "prune":
        channels = json.loads((last_dir / CHANNELS_FILE).read_text())
        parent, _ = load_model(channels["parent"])
        save_model(slim(parent, channels["kept"]), out / "model.pt")
    else:
        shutil.copyfile(last_dir / "model.pt", out / "model.pt")
    load_model(out / "model.pt")  # it must load with no extra flags
    summary = run_dir / "summary.json"
    info = json.loads(summary.read_text()) if summary.is_file() else {"complete": False, "last_stage": last}
    atomic.write_json(out / "summary.json", info)
    return out / "model.pt"
