"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding, for style transfer and GANs.

Level 0 trains the dense model and keeps its weights at step ``prune.rewind_step``. Level k prunes
``prune.rate`` of level k-1's remaining weights by magnitude (globally, or per layer), rewinds the survivors
to the kept weights and retrains for ``train.steps``. A level is "matching" when its value of the model's
verdict metric (``verdict_metric``: E for style transfer, FID for a GAN, from its ``set_metrics``) is at most
the dense level's (times 1 + ``prune.matching_tolerance``); the extreme sparsity is the highest matching
pruned level's (0 when none matches). A GAN's discriminator is treated as ``prune.discriminator`` says
(``discriminator.py``).

An IMP run is a schedule (``distst.prune.schedule``): each level is a prune step (its masks, ``mask.pt``)
followed by a train step (rewind, then masked training), both in ``level_<k>/`` (mask.pt, model.pt,
samples.png, the level's checkpoints and metrics.jsonl); ``steps/`` holds each finished step's record and
``summary.json`` the levels' verdicts. Re-running resumes: finished steps are skipped, the current level
resumes from its last checkpoint, and a level's mask, once written, is never recomputed. The controls
(``prune.control``) are strategies of their own (``controls``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from .. import atomic, registry
from ..config import Config, ConfigError, MethodSection
from ..data import eval_pairs
from ..data.loader import first_images
from ..errors import DataError
from ..evaluate import stylize_pairs
from ..images import save_image
from ..masters import fp32_state_dict
from ..models import create, model_class
from ..models.io import load_model, read_model_file
from ..records import Record
from ..reports.imp import evaluation_row, level_values
from ..train import Method, MethodList, TrainContext, TrainResult
from ..train.engine import setup_distributed
from . import discriminator
from .controls import CONTROLS
from .masks import MaskedTraining, Masks, full_masks, masked_state, prune_magnitude, sparsity_report
from .schedule import Curve, PruneStep, Schedule, Step, SweepableSchedule, TrainStep

REWIND_FILE = "rewind.pt"
MASK_FILE = "mask.pt"


@registry.method(command="imp", needs_full_parameters=True, trains_encoder=True, decides_by_verdict=True)
class ImpSection(MethodSection):
    """``prune.*`` for lottery tickets by iterative magnitude pruning (masks edit weights in place; a level matches
    by the model's verdict metric)."""

    #: An IMP run is a schedule of levels (``ImpSchedule``, below).
    schedule_class: ClassVar[type[Schedule]]

    method: Literal["imp"] = "imp"
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(0, ge=0, description="pruning levels after the dense level 0")
    rewind_step: int = Field(0, ge=0, description="step of the dense run whose weights are rewound to")
    scope: list[str] | None = Field(None, description="groups to prune; default: the model's (style transfer: "
                                                      "encoder, transform, decoder)")
    layerwise: bool = Field(False, description="prune the same rate in every layer instead of globally")
    control: Literal[tuple(CONTROLS)] = Field("none", description="a lottery-ticket control (controls.py)")  # type: ignore[valid-type]
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


def level_dir(run_dir: Path, level: int) -> Path:
    return run_dir / f"level_{level}"


def planned_levels(cfg: Config) -> list[int]:
    """Level numbers to train; the one-shot control trains only the dense level and one pruned level."""
    return CONTROLS[cfg.prune.control].levels(cfg.prune.rounds)


def load_masks(run_dir: Path, level: int) -> Masks:
    return dict(torch.load(level_dir(run_dir, level) / MASK_FILE, weights_only=True))


def compute_masks(cfg: Config, run_dir: Path, level: int) -> Masks:
    """Masks of ``level``: all ones for the dense level; else pruned by magnitude from the trained weights of
    the level the control ranks from (``prune.rate`` of the remainder per round), as the control chooses."""
    if level == 0:
        return full_masks(create(cfg.model, weights=False), cfg.prune.scope)
    control = CONTROLS[cfg.prune.control]
    source = control.ranked_level(level)
    model, _ = load_model(level_dir(run_dir, source) / "model.pt")
    prior = load_masks(run_dir, source) if source else full_masks(model, cfg.prune.scope)
    depth = control.depth(cfg.prune.rounds, level)
    masks: Masks = {}
    for groups in discriminator.ranking_sets(cfg):
        ranked = {name: mask for name, mask in prior.items() if name.split(".", 1)[0] in groups}
        masks.update(prune_magnitude(model, ranked, cfg.prune.rate, depth, cfg.prune.layerwise))
    return control.choose(masks, prior, cfg.train.seed, level)


def initial_state(cfg: Config, run_dir: Path, level: int, masks: Masks) -> dict[str, torch.Tensor]:
    """Rewound weights (or what the control starts from instead) with the masks applied."""
    state = torch.load(level_dir(run_dir, 0) / REWIND_FILE, weights_only=True)
    fresh = CONTROLS[cfg.prune.control].fresh_weights(lambda: create(cfg.model, weights=False).state_dict(),
                                                      cfg.train.seed, level)
    if fresh is not None:
        state.update({f"{name}.weight": fresh[f"{name}.weight"] for name in masks})
    if level > 0:
        discriminator.carry_over(cfg, state, level_dir(run_dir, level - 1))
    return masked_state(state, masks)


def _samples_row(cfg: Config, folder: Path) -> None:
    """``samples.png``: the level's stylisations of the held-out pairs, in one row (the report stacks rows)."""
    content, style = eval_pairs(cfg.data)
    model, _ = load_model(folder / "model.pt")
    out = stylize_pairs(model, content, style)
    save_image(torch.cat(list(out), dim=2), folder / "samples.png")
    if not (folder.parent / "pairs.png").is_file():
        save_image(torch.cat([torch.cat(list(content), dim=2), torch.cat(list(style), dim=2)], dim=1),
                   folder.parent / "pairs.png")


def _set_metrics(cfg: Config, folder: Path, device: torch.device) -> dict[str, float]:
    """The trained level's metrics over whole held-out sets (a GAN's FID and KID), if its model has any."""
    if not model_class(cfg.model.name).set_metric_names:
        return {}  # style transfer: nothing to build or read
    section, state = read_model_file(folder / "model.pt")
    # The job's own evaluation keys (extractor, its weights, image count) with the file's plan.
    model = create(cfg.model.model_copy(update={"plan": section.plan}), weights=state, source=str(folder / "model.pt"))
    size = cfg.data.eval_size or cfg.data.crop

    def held_out(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return (first_images(cfg.data.eval_content or cfg.data.content, count, size),
                    first_images(cfg.data.eval_style or cfg.data.style, count, size))
        except DataError as err:
            raise ConfigError(f"{cfg.model.name}'s held-out set metrics need {count} images of each held-out set "
                              f"(model.fid_images): {err}") from None

    return model.to(device).set_metrics(held_out)


def trained_record(cfg: Config, folder: Path, masks: Masks) -> Record:
    """What the record of a masked model trained in ``folder`` holds (an IMP level, a transferred ticket): its
    sparsity overall, per group and per layer, its weight counts and any set metrics; writes its samples row."""
    _samples_row(cfg, folder)
    set_metrics = _set_metrics(cfg, folder, setup_distributed().device)
    report = sparsity_report(masks)
    found = {"sparsity": report["sparsity"], "sparsity_groups": report["groups"], "sparsity_layers": report["layers"],
             "prunable_weights": report["prunable_weights"], "remaining_weights": report["remaining_weights"]}
    if set_metrics:
        found.update(set_metrics, set_metrics=sorted(set_metrics))
    return found


def imp_summary(cfg: Config, records: list[Record]) -> dict[str, Any]:
    """``summary.json`` from the finished levels' records: per-level verdicts and the extreme sparsity."""
    levels = [level_values(r) for r in records if r["kind"] == "train"]
    verdict = model_class(cfg.model.name).verdict_metric
    dense = levels[0][verdict] if levels else None
    bound = dense * (1.0 + cfg.prune.matching_tolerance) if dense is not None else None
    rows = [{**evaluation_row(lv), "matching": bool(lv[verdict] <= bound)} for lv in levels]
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
    }


class ImpSchedule(SweepableSchedule):
    """Level 0 trains the dense model (full masks, keeping the rewind point); level k ranks level k-1's trained
    weights into masks (the prune step) and retrains the rewound survivors (the train step)."""

    kind = "imp"
    label = "IMP"
    iteration = "IMP level"
    table_columns = ("level", "sparsity", "total_error", "extreme_sparsity", "matching", "dense_total_error")
    log_prefix = "imp"
    curve = Curve(x="sparsity", scale=100.0, label="sparsity (% of prunable weights)", file="e_vs_sparsity.png")
    _ROW_METRICS = ("total_error", "content_error", "style_error", "sparsity", "extreme_sparsity", "matching",
                    "level", "dense_total_error", "training_iteration")

    @classmethod
    def validate(cls, cfg: Config) -> None:
        if cfg.prune.rewind_step > cfg.train.steps:
            raise ConfigError(f"prune.rewind_step={cfg.prune.rewind_step} lies beyond train.steps={cfg.train.steps}")

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        for level in planned_levels(self.cfg):
            name = f"level_{level}"
            steps += [PruneStep(f"{name}_masks", lambda folder, _r, level=level: self._prune(folder, level), dir=name),
                      TrainStep(name, self.cfg.train.steps, lambda folder, level=level: self._method(folder, level),
                                init_state=(lambda level=level: self._init(level)) if level else None)]
        return steps

    def _prune(self, folder: Path, level: int) -> Record:
        masks = compute_masks(self.cfg, self.run_dir, level)
        atomic.torch_save(masks, folder / MASK_FILE)
        report = sparsity_report(masks)
        return {"level": level, "sparsity": report["sparsity"]}

    def _method(self, folder: Path, level: int) -> Method:
        masked = MaskedTraining(load_masks(self.run_dir, level))
        if level == 0:
            return MethodList([masked, RewindSnapshot(folder / REWIND_FILE, self.cfg.prune.rewind_step)])
        extra = discriminator.level_methods(self.cfg, self.run_dir)
        return MethodList([masked, *extra]) if extra else masked

    def _init(self, level: int) -> dict[str, torch.Tensor]:
        return initial_state(self.cfg, self.run_dir, level, load_masks(self.run_dir, level))

    def describe(self, step: Step, step_dir: Path, result: TrainResult | None) -> Record:
        if not isinstance(step, TrainStep):
            return {}
        level = int(step.name.split("_")[1])
        return {"level": level, **trained_record(self.cfg, step_dir, load_masks(self.run_dir, level))}

    def summary(self, records: list[Record]) -> dict[str, Any]:
        return imp_summary(self.cfg, records)

    @classmethod
    def metrics(cls, cfg: Config) -> tuple[str, ...]:
        return (*cls._ROW_METRICS, *model_class(cfg.model.name).set_metric_names)

    @classmethod
    def rows(cls, cfg: Config, records: list[Record], macs_budget: int | None = None) -> list[dict[str, Any]]:
        """Every finished level as the summary has it (its errors, set metrics such as a GAN's FID, and the
        verdict of the model's own metric), with the dense E and the extreme sparsity so far."""
        rows: list[dict[str, Any]] = []
        best = 0.0
        for level in imp_summary(cfg, records)["levels"]:
            row = {**level, "matching": int(level["matching"])}
            row["dense_total_error"] = rows[0]["total_error"] if rows else row["total_error"]
            best = max(best, row["sparsity"]) if row["matching"] and row["level"] > 0 else best
            row["extreme_sparsity"] = best
            rows.append(row)
        return rows

    @classmethod
    def iterations(cls, cfg: Config) -> int:
        return len(planned_levels(cfg))


ImpSection.schedule_class = ImpSchedule
