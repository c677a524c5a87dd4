"""The channel methods' schedule: their stages run by the one driver (``distst.prune.schedule``), and the
slimmed model packaged at the end.

Run directory::

    loss_vgg.pth                  the frozen loss VGG of every stage (written when the job names no vgg_weights)
    00_dense/                     a train stage: model.pt, summary.json, checkpoints, metrics.jsonl ...
    01_prune_1/                   a prune stage: model.pt (slimmed), channels.json (kept channels)
    02_finetune_1/ ...
    steps/<stage>.json            each finished stage's record (the driver's done marker)
    slim/model.pt, slim/summary.json   the final slimmed model (``distst slim``)
    summary.json, report/report.md

Re-running skips done stages and a train stage resumes from its last checkpoint (``train`` does that). Every
train stage starts from the previous stage's model file (``model.init_from``), so a slimmed plan trains as a
plain, smaller dense model.
"""

from __future__ import annotations

import json
import shutil
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
from ...records import STEPS_DIR, Record, step_records
from ...train import TrainResult
from ..schedule import Curve, PruneStep, Step, SweepableSchedule, TrainStep
from .methods import ChannelSection, PruneInputs, PruneStage, TrainStage
from .surgery import slim, widths

CHANNELS_FILE = "channels.json"
LOSS_VGG = "loss_vgg.pth"
SLIM_DIR = "slim"


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


class ChannelSchedule(SweepableSchedule):
    """A channel method's stages (``ChannelSection.stages``) as the driver's steps: each train stage starts
    from the previous stage's model file, each prune stage slims the previous model by the method's choice."""

    kind = "channels"
    label = "channel-pruning"
    iteration = "train stage"
    table_columns = ("stage_index", "total_error", "budgeted_error", "macs", "macs_ratio", "params",
                     "dense_total_error")
    log_prefix = "prune"
    curve = Curve(x="macs", scale=1e-9, label="GMACs per stylisation (log scale)", file="e_vs_macs.png", log_x=True)
    _ROW_METRICS = ("total_error", "content_error", "style_error", "macs", "params", "stage_index",
                    "dense_total_error", "macs_ratio", "budgeted_error", "training_iteration")

    @classmethod
    def validate(cls, cfg: Config) -> None:
        if not type(cfg.model).model_class.supports_channel_pruning():
            raise ConfigError(f"{cfg.model.name} declares no channel layers (channel_layers, coupling_forward): "
                              "channel pruning cannot run on it")

    def prepare(self, is_main: bool) -> None:
        self.cfg = _with_loss_vgg(self.cfg, self.run_dir, is_main)

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        for index, stage in enumerate(self.cfg.prune.stages(self.cfg)):
            name = f"{index:02d}_{stage.name}"
            if isinstance(stage, TrainStage):
                steps.append(TrainStep(name, stage.steps, stage.method,
                                       overrides=lambda records, index=index: self._overrides(index, records)))
            else:
                steps.append(PruneStep(name, lambda folder, records, stage=stage: self._prune(stage, folder, records)))
        return steps

    def _current(self, records: list[Record]) -> Path | None:
        """The model file the next stage starts from: the last stage's, else the job's ``model.init_from``."""
        if records:
            return self.run_dir / records[-1]["dir"] / "model.pt"
        return Path(self.cfg.model.init_from) if self.cfg.model.init_from else None

    def _overrides(self, index: int, records: list[Record]) -> dict[str, Any]:
        # Each stage its own data order (a fine-tuning stage does not replay the dense stage's batches).
        overrides: dict[str, Any] = {"data.seed": self.cfg.data.seed + index}
        current = self._current(records)
        if current is not None:
            overrides["model.init_from"] = str(current)
        return overrides

    def _prune(self, stage: PruneStage, folder: Path, records: list[Record]) -> Record:
        current = self._current(records)
        if current is None or not records:
            raise ConfigError("a channel-pruning schedule starts with a train stage")
        trained = next(r for r in reversed(records) if r["kind"] == "train")
        model = _load(self.cfg, current)

        def images() -> torch.Tensor:
            return torch.cat(eval_pairs(self.cfg.data))

        inputs = PruneInputs(self.cfg, model, self.run_dir / trained["dir"], records[0]["widths"], images)
        selection = stage.select(inputs)
        slimmed = slim(model, selection, inputs.graph())  # one trace per prune step: the choice's and the cut's
        atomic.write_json(folder / CHANNELS_FILE, {"parent": str(current), "kept": selection})
        save_model(slimmed, folder / "model.pt")
        return {"before_finetune": _errors(self.cfg, slimmed)}

    def describe(self, step: Step, step_dir: Path, result: TrainResult | None) -> Record:
        size = self.cfg.data.eval_size or self.cfg.data.crop
        return {"stage": step.name.split("_", 1)[1], **_describe(_load(self.cfg, step_dir / "model.pt"), size)}

    def summary(self, records: list[Record]) -> dict[str, Any]:
        return channel_summary(self.cfg, records)

    def finish(self, summary: dict[str, Any]) -> None:
        write_slim(self.run_dir)

    @classmethod
    def metrics(cls, cfg: Config) -> tuple[str, ...]:
        return cls._ROW_METRICS

    @classmethod
    def rows(cls, cfg: Config, records: list[Record], macs_budget: int | None = None) -> list[dict[str, Any]]:
        return channel_rows(records, macs_budget)

    @classmethod
    def iterations(cls, cfg: Config) -> int:
        return sum(isinstance(stage, TrainStage) for stage in cfg.prune.stages(cfg))


ChannelSection.schedule_class = ChannelSchedule


def _fraction_removed(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                      keys: list[tuple[str, str]] | None = None) -> float:
    """Fraction of the channels of ``keys`` (default: every channel layer) removed."""
    keys = keys if keys is not None else [(g, n) for g, layers in before.items() for n in layers]
    total = sum(before[g][n] for g, n in keys)
    return 1.0 - sum(after[g][n] for g, n in keys) / total if total else 0.0


def channel_summary(cfg: Config, records: list[Record]) -> dict[str, Any]:
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
                   {key: (r.get("errors") or r.get("before_finetune") or {}).get(key)
                    for key in ("total_error", "temporal_error")} |
                   {"params": r["params"]["total"], "macs": r["macs"]["total"]} for r in records],
        "slim_model": f"{SLIM_DIR}/model.pt",
    }


def write_slim(run_dir: Path) -> Path:
    """``slim/model.pt`` from the run's last finished stage: a prune stage's selection is applied to its parent
    again (the surgery is deterministic), a train stage's model (scales folded, plan narrowed) is taken as is;
    ``slim/summary.json`` beside it holds the run's summary (or, mid-run, the stage's record)."""
    run_dir = Path(run_dir)
    records = step_records(run_dir)
    if not records or "stage" not in records[0]:
        raise FileNotFoundError(f"{run_dir} has no finished stage (no {STEPS_DIR}/NN_<stage>.json): "
                                "is it a distst prune run directory?")
    last = records[-1]
    last_dir = run_dir / last["dir"]
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


def budgeted_error(total_error: float, macs: int, macs_budget: int) -> float:
    """E within the MAC budget; beyond it E grows in proportion to the excess: E * macs / budget.

    A model twice over the budget counts as twice as bad, so a search trades E against MACs near the budget
    instead of ignoring them (or refusing every model over it, which would leave ASHA nothing to compare early).
    """
    return total_error if macs <= macs_budget else total_error * macs / macs_budget


def channel_rows(records: list[Record], macs_budget: int | None = None) -> list[dict[str, Any]]:
    """One sweep row per finished train stage of a channel-pruning run (its records, in order)."""
    trained = [r for r in records if r["kind"] == "train"]
    rows: list[dict[str, Any]] = []
    for record in trained:
        errors, cost = record["errors"], record["macs"]["total"]
        row = {"stage_index": record["index"], "total_error": errors["total_error"],
               "content_error": errors["content_error"], "style_error": errors["style_error"], "macs": cost,
               "params": record["params"]["total"], "dense_total_error": trained[0]["errors"]["total_error"],
               "macs_ratio": trained[0]["macs"]["total"] / cost}
        if macs_budget is not None:
            row["budgeted_error"] = budgeted_error(errors["total_error"], cost, macs_budget)
        rows.append(row)
    return rows
