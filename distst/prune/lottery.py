"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding, for style transfer and GANs.

Level 0 trains the dense model and keeps its weights at step ``prune.rewind_step``. Level k prunes
``prune.rate`` of level k-1's remaining weights by magnitude (globally, or per layer), rewinds the survivors
to the kept weights and retrains for ``train.steps``. A level is "matching" when its value of the model's
verdict metric (``verdict_metric``: E for style transfer, FID for a GAN, from its ``set_metrics``) is at most
the dense level's (times 1 + ``prune.matching_tolerance``); the extreme sparsity is the highest matching
pruned level's (0 when none matches). A GAN's discriminator is treated as ``prune.discriminator`` says
(``discriminator.py``).

Run directory: ``level_<k>/`` (mask.pt, model.pt, metrics.json, samples.png, the level's checkpoints and
metrics.jsonl) and ``summary.json``. Re-running resumes: finished levels are skipped, the current level
resumes from its last checkpoint, and a level's mask, once written, is never recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from .. import atomic, registry
from ..config import Config, ConfigError, MethodSection
from ..data import eval_pairs
from ..data.errors import DataError
from ..data.loader import first_images
from ..evaluate import stylize_pairs
from ..images import save_image
from ..masters import fp32_state_dict
from ..models import DiststModel, build, model_class
from ..models.io import load_model, read_model_file
from ..models.weights import load_checked
from ..report import write_report
from ..stop import StopRequest
from ..track import Tracker
from ..train import Method, MethodList, TrainContext, train
from ..train.engine import setup_distributed
from . import discriminator
from .masks import MaskedTraining, Masks, full_masks, prune_magnitude, random_subset, sparsity_report

REWIND_FILE = "rewind.pt"
MASK_FILE = "mask.pt"
LEVEL_METRICS = "metrics.json"


class ImpSection(MethodSection):
    """``prune.*`` for lottery tickets by iterative magnitude pruning."""

    trains_whole_network: ClassVar[bool] = True
    command: ClassVar[str] = "imp"

    method: Literal["imp"] = "imp"
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(0, ge=0, description="pruning levels after the dense level 0")
    rewind_step: int = Field(0, ge=0, description="step of the dense run whose weights are rewound to")
    scope: list[str] | None = Field(None, description="groups to prune; default: the model's (style transfer: "
                                                      "encoder, transform, decoder)")
    layerwise: bool = Field(False, description="prune the same rate in every layer instead of globally")
    control: Literal["none", "random_prune", "random_reinit", "one_shot"] = "none"
    matching_tolerance: float = Field(0.0, ge=0, description="relative slack on the dense E (or FID) for "
                                                             "'matching'")
    discriminator: Literal["reset", "finetune", "prune", "distill"] | None = Field(
        None, description="GANs: reset (dense, rewound each level; default), finetune (kept from the previous "
                          "level), prune (pruned and rewound with the generator), distill (reset + KD from the "
                          "dense run's discriminator)")
    distill_weight: float | None = Field(None, ge=0, description="weight of the distillation loss (default 1.0 "
                                                                 "with prune.discriminator=distill)")

    @model_serializer(mode="wrap")
    def _without_unset_gan_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent rather than null for models without a discriminator: their configs, config hashes and run
        # directories stay what they were before GANs came.
        data = handler(self)
        for key in ("discriminator", "distill_weight"):
            if key in data and data[key] is None:
                del data[key]
        return data

    def resolve(self, cfg: Config) -> None:
        discriminator.resolve_option(self, cfg)
        groups = type(cfg.model).groups
        if self.scope is None:
            self.scope = list(type(cfg.model).default_prune_scope)
        unknown = [g for g in self.scope if g not in groups]
        if unknown:
            raise ValueError(f"prune.scope: {cfg.model.name} has no group(s) {', '.join(map(repr, unknown))}; "
                             f"its groups: {', '.join(groups)}")
        if not self.scope:
            raise ValueError(f"prune.scope is empty; choose from {', '.join(groups)}")


registry.register_method_section("imp", ImpSection)


class RewindSnapshot(Method):
    """Keeps the dense run's weights at ``step``, in fp32 (the optimizer's master copies when training in
    bf16/fp16): the point every pruned level rewinds to."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step
        self._needed = False

    def _save(self, ctx: TrainContext) -> None:
        if self._needed and ctx.step == self.step:
            state = fp32_state_dict(ctx.model)  # collective under ZeRO: every rank takes part
            if ctx.dist.is_main:
                atomic.torch_save(state, self.path)
            self._needed = False

    def on_train_start(self, ctx: TrainContext) -> None:
        # Decided once, before anyone writes it, so that every rank makes the same collective calls.
        self._needed = not self.path.is_file()
        self._save(ctx)

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self._save(ctx)


@dataclass
class ImpResult:
    stopped: bool
    summary: dict[str, Any]


def planned_levels(cfg: Config) -> list[int]:
    """Level numbers to train; the one-shot control trains only the dense level and one pruned level."""
    if cfg.prune.control == "one_shot":
        return [0, 1] if cfg.prune.rounds else [0]
    return list(range(cfg.prune.rounds + 1))


def pruning_depth(cfg: Config, level: int) -> int:
    """How many rounds of ``prune.rate`` the masks of ``level`` amount to."""
    return cfg.prune.rounds if cfg.prune.control == "one_shot" and level > 0 else level


def validate(cfg: Config) -> None:
    if cfg.prune.method != "imp":
        raise ConfigError(f"distst imp needs prune.method=imp (got {cfg.prune.method})")
    if cfg.prune.rewind_step > cfg.train.steps:
        raise ConfigError(f"prune.rewind_step={cfg.prune.rewind_step} lies beyond train.steps={cfg.train.steps}")


def _trained(level_dir: Path) -> DiststModel:
    model, _ = load_model(level_dir / "model.pt")
    return model


def _compute_masks(cfg: Config, run_dir: Path, level: int) -> Masks:
    """Masks of ``level`` from level ``level-1``'s final weights (or the dense ones, for one-shot)."""
    previous = 0 if cfg.prune.control == "one_shot" else level - 1
    model = _trained(run_dir / f"level_{previous}")
    prior = _load_masks(run_dir, previous) if previous else full_masks(model, cfg.prune.scope)
    masks: Masks = {}
    for groups in discriminator.ranking_sets(cfg):
        ranked = {name: mask for name, mask in prior.items() if name.split(".", 1)[0] in groups}
        masks.update(prune_magnitude(model, ranked, cfg.prune.rate, pruning_depth(cfg, level), cfg.prune.layerwise))
    if cfg.prune.control == "random_prune":
        generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + level)
        masks = {name: random_subset(prior[name], int(mask.sum()), generator) for name, mask in masks.items()}
    return masks


def _without_weight_files(cfg: Config) -> Any:
    """The model config without pretrained files: for shapes and fresh initialisations."""
    weight_files = {"vgg_weights", "decoder_weights", "transform_weights"} & set(type(cfg.model).model_fields)
    return cfg.model.model_copy(update={key: None for key in weight_files})


def _load_masks(run_dir: Path, level: int) -> Masks:
    return dict(torch.load(run_dir / f"level_{level}" / MASK_FILE, weights_only=True))


def _level_masks(cfg: Config, run_dir: Path, level: int, is_main: bool) -> Masks:
    """The level's masks: computed once by rank 0 and written, then read by every rank."""
    path = run_dir / f"level_{level}" / MASK_FILE
    if is_main and not path.is_file():
        if level == 0:
            masks = full_masks(build(_without_weight_files(cfg)), cfg.prune.scope)
        else:
            masks = _compute_masks(cfg, run_dir, level)
        atomic.torch_save(masks, path)
    dist.barrier()
    return _load_masks(run_dir, level)


def _initial_state(cfg: Config, run_dir: Path, level: int, masks: Masks) -> dict[str, torch.Tensor]:
    """Rewound weights (or, for the random re-init control, a fresh initialisation) with the masks applied."""
    state = torch.load(run_dir / "level_0" / REWIND_FILE, weights_only=True)
    if cfg.prune.control == "random_reinit":
        torch.manual_seed(cfg.train.seed + 7919 * level)  # a different init per level, reproducible
        fresh = build(_without_weight_files(cfg)).state_dict()
        state.update({f"{name}.weight": fresh[f"{name}.weight"] for name in masks})
    if level > 0:
        discriminator.carry_over(cfg, state, run_dir / f"level_{level - 1}")
    for name, mask in masks.items():
        state[f"{name}.weight"] = state[f"{name}.weight"] * mask
    return state


def _samples_row(cfg: Config, level_dir: Path) -> None:
    """``samples.png``: the level's stylisations of the held-out pairs, in one row (the report stacks rows)."""
    content, style = eval_pairs(cfg.data)
    out = stylize_pairs(_trained(level_dir), content, style)
    save_image(torch.cat(list(out), dim=2), level_dir / "samples.png")
    if not (level_dir.parent / "pairs.png").is_file():
        save_image(torch.cat([torch.cat(list(content), dim=2), torch.cat(list(style), dim=2)], dim=1),
                   level_dir.parent / "pairs.png")


def _set_metrics(cfg: Config, level_dir: Path, device: torch.device) -> dict[str, float]:
    """The trained level's metrics over whole held-out sets (a GAN's FID and KID), if its model has any."""
    if model_class(cfg.model.name).set_metrics is DiststModel.set_metrics:
        return {}  # style transfer: nothing to build or read
    section, state = read_model_file(level_dir / "model.pt")
    # The job's own evaluation keys (extractor, its weights, image count) with the file's plan.
    model = model_class(section.name)(cfg.model.model_copy(update={"plan": section.plan}))
    load_checked(model, state, str(level_dir / "model.pt"))
    size = cfg.data.eval_size or cfg.data.crop

    def held_out(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return (first_images(cfg.data.eval_content or cfg.data.content, count, size),
                    first_images(cfg.data.eval_style or cfg.data.style, count, size))
        except DataError as err:
            raise ConfigError(f"{cfg.model.name}'s held-out set metrics need {count} images of each held-out set "
                              f"(model.fid_images): {err}") from None

    return model.to(device).set_metrics(held_out)


def _level_metrics(level: int, masks: Masks, summary: dict[str, Any], set_metrics: dict[str, float]
                   ) -> dict[str, Any]:
    report = sparsity_report(masks)
    found = {"level": level, "sparsity": report["sparsity"], "sparsity_groups": report["groups"],
             "sparsity_layers": report["layers"], "prunable_weights": report["prunable_weights"],
             "remaining_weights": report["remaining_weights"], **summary["final"], "steps": summary["steps"],
             "wall_s": summary["wall_s"], "images_per_s": summary["images_per_s"]}
    if set_metrics:
        found.update(set_metrics, set_metrics=sorted(set_metrics))
    return found


def _row(lv: dict[str, Any]) -> dict[str, Any]:
    """A level's evaluation values: the per-pair error means (``*_error``, E included) and any set metrics."""
    keys = [k for k in lv if k.endswith("_error")] + list(lv.get("set_metrics", []))
    return {"level": lv["level"], "sparsity": lv["sparsity"], **{k: lv[k] for k in keys}}


def imp_summary(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """``summary.json`` from the finished levels' metrics: per-level verdicts and the extreme sparsity."""
    levels = [json.loads((run_dir / f"level_{k}" / LEVEL_METRICS).read_text())
              for k in planned_levels(cfg) if (run_dir / f"level_{k}" / LEVEL_METRICS).is_file()]
    verdict = model_class(cfg.model.name).verdict_metric
    dense = levels[0][verdict] if levels else None
    bound = dense * (1.0 + cfg.prune.matching_tolerance) if dense is not None else None
    rows = [{**_row(lv), "matching": bool(lv[verdict] <= bound)} for lv in levels]
    matching = [r["sparsity"] for r in rows if r["matching"] and r["level"] > 0]  # the dense level proves nothing
    model_keys = {key: getattr(cfg.model, key) for key in ("encoder",) if hasattr(cfg.model, key)}
    gan_keys = {key: getattr(cfg.prune, key) for key in ("discriminator", "distill_weight")
                if getattr(cfg.prune, key, None) is not None}
    return {
        "model": cfg.model.name, "method": "imp", "control": cfg.prune.control, "rate": cfg.prune.rate,
        "rounds": cfg.prune.rounds, "scope": cfg.prune.scope, "layerwise": cfg.prune.layerwise,
        "rewind_step": cfg.prune.rewind_step, **model_keys, **gan_keys, "verdict": verdict,
        "matching_tolerance": cfg.prune.matching_tolerance, f"dense_{verdict}": dense,
        # E is an L2 norm over C x H x W: comparable only at the same evaluation size and pairs.
        "eval_size": cfg.data.eval_size or cfg.data.crop, "eval_pairs": cfg.data.eval_pairs,
        "levels": rows, "extreme_sparsity": max(matching) if matching else 0.0,
        "complete": len(rows) == len(planned_levels(cfg)),
    }


def run_imp(cfg: Config, run_dir: Path, *, stop: StopRequest | None = None,
            on_level: Callable[[dict[str, Any]], None] | None = None) -> ImpResult:
    """Run (or resume) every IMP level of ``cfg`` in ``run_dir``.

    ``stop`` is passed to each level's training (checkpoint and return); ``on_level`` is called on rank 0
    after each level finishes (also for levels finished before a resume) with that level's row of the summary
    and ``extreme_sparsity_so_far``: what a Tune trial reports.
    """
    validate(cfg)
    info = setup_distributed()
    job = cfg.run.name or run_dir.name
    group = cfg.tracking.group or f"{job}-{run_dir.name}"  # a sweep sets tracking.group: one group per sweep
    for level in planned_levels(cfg):
        level_dir = run_dir / f"level_{level}"
        if (level_dir / LEVEL_METRICS).is_file():
            _report_level(cfg, run_dir, level, info.is_main, on_level)
            continue
        masks = _level_masks(cfg, run_dir, level, info.is_main)
        masked = MaskedTraining(masks)
        if level == 0:
            method: Method = MethodList([masked, RewindSnapshot(level_dir / REWIND_FILE, cfg.prune.rewind_step)])
            init_state = None
        else:
            extra = discriminator.level_methods(cfg, run_dir)
            method = MethodList([masked, *extra]) if extra else masked
            init_state = _initial_state(cfg, run_dir, level, masks)
        result = train(cfg, level_dir, method, init_state=init_state, run_name=f"{job}/level_{level}",
                       run_group=group, stop=stop)
        if result.stopped:
            return ImpResult(stopped=True, summary=imp_summary(cfg, run_dir))
        if info.is_main:
            _samples_row(cfg, level_dir)
            set_metrics = _set_metrics(cfg, level_dir, info.device)
            atomic.write_json(level_dir / LEVEL_METRICS, _level_metrics(level, masks, result.summary, set_metrics))
        dist.barrier()
        _report_level(cfg, run_dir, level, info.is_main, on_level)
    summary = imp_summary(cfg, run_dir)
    if info.is_main:
        atomic.write_json(run_dir / "summary.json", summary)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        publish(cfg, run_dir, summary, group=group)
    dist.barrier()
    return ImpResult(stopped=False, summary=summary)


def _report_level(cfg: Config, run_dir: Path, level: int, is_main: bool,
                  on_level: Callable[[dict[str, Any]], None] | None) -> None:
    if on_level is None or not is_main:
        return
    summary = imp_summary(cfg, run_dir)
    row = next(r for r in summary["levels"] if r["level"] == level)
    on_level({**row, "extreme_sparsity_so_far": summary["extreme_sparsity"]})


def publish(cfg: Config, run_dir: Path, summary: dict[str, Any], group: str) -> Path:
    """Write the report and send its table, plots and grid to W&B (one summary run in the IMP group)."""
    report = write_report(run_dir)
    tracker = Tracker(cfg.tracking, run_dir, config=cfg.model_dump(mode="json"), name=f"{group}/summary",
                      group=group, enabled=True, job_type="imp-summary", resume_step=None, metrics_file=None)
    columns = list(summary["levels"][0]) if summary["levels"] else ["level", "sparsity", "matching"]
    tracker.log_table("imp/levels", columns, [[row[c] for c in columns] for row in summary["levels"]])
    for image in sorted(report.parent.glob("*.png")):
        tracker.log_image(f"imp/{image.stem}", image, step=None)
    tracker.summary({"extreme_sparsity": summary["extreme_sparsity"], "levels": len(summary["levels"])})
    tracker.finish()
    return report
