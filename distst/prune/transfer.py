"""Lottery tickets transferred to another data set or task (``prune.method=transfer``).

Morcos et al. (NeurIPS 2019, *One ticket to win them all*) find a ticket by IMP on one data set and train it,
mask fixed, on another; Chen et al. (ICLR 2021, *GANs Can Play Lottery Tickets Too*) do the same with GAN
generators. Both start the transferred ticket from the *source's* rewound weights (late rewinding) and compare
it with the ticket IMP finds on the target itself, at the same sparsity, and with the dense target model.

So a transfer run trains once: ``prune.transfer_from=RUN_DIR/level_K`` names a level of a ``distst imp`` run; its
mask (``mask.pt``) is copied into this run and held fixed by IMP's own ``MaskedTraining`` while the model trains
on this job's data for ``train.steps``. ``prune.transfer_weights`` chooses the start:

- ``rewind`` (default, as both papers): the source run's rewind point (``level_0/rewind.pt``), masked;
- ``init``: this run's own initialisation (``train.seed``, or ``model.init_from``), masked: only the mask transfers
  (the random-reinit control of a transfer);
- ``trained``: the source level's trained weights (``level_K/model.pt``): the pruned model fine-tuned on the new task.

The run is a schedule of two steps in ``ticket/``: a prune step copies the mask and the starting weights (a resumed
or moved run never reads the source again) and records where they came from; a train step trains. A mask of
another model, another plan or width, or of a level with no pruned weight is refused in one line before anything
starts (``distst check`` too). ``prune.compare_with=RUN_DIR/level_K`` names a level of an IMP run on *this* run's
data: the summary and report put the transferred ticket beside it and beside that run's dense level, which decides
whether the transferred ticket is matching.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import Field

from .. import atomic, registry
from ..config import Config, ConfigError, MethodSection
from ..errors import DiststError
from ..models import create, model_class
from ..models.io import read_model_file
from ..records import Record, record_path
from ..reports.imp import evaluation_row, level_values
from ..reports.transfer import comparison
from ..rundir import stored_config
from ..train import Method
from ..weights import mismatches, read_state_dict
from .lottery import MASK_FILE, REWIND_FILE, level_dir, trained_record
from .masks import MaskedTraining, Masks, mask_mismatch, masked_state, off_mask_nonzero, sparsity_report
from .schedule import PruneStep, Schedule, Step, TrainStep

TICKET_DIR = "ticket"
START_FILE = "start.pt"  # the weights the ticket starts from, copied from the source (rewind, trained)
MASK_STEP, TRAIN_STEP = "ticket_mask", "ticket"
_LEVEL = re.compile(r"level_(\d+)")


@registry.method(command="imp", needs_full_parameters=True, trains_encoder=True, decides_by_verdict=True)
class TransferSection(MethodSection):
    """``prune.*`` for a lottery ticket transferred from another run (its mask held fixed) and trained once here."""

    schedule_class: ClassVar[type[Schedule]]

    method: Literal["transfer"] = "transfer"
    # A default only so that the section has one (pydantic builds it to compare with); resolve() requires a value.
    transfer_from: str = Field("", description="RUN_DIR/level_K of a distst imp run: the ticket (its mask.pt) trained "
                                               "here")
    transfer_weights: Literal["rewind", "init", "trained"] = Field(
        "rewind", description="rewind: the source's rewind point (level_0/rewind.pt), as Morcos et al. and Chen et al.; "
                              "init: this run's own initialisation (only the mask transfers); trained: the source "
                              "level's trained weights (fine-tuning)")
    compare_with: str | None = Field(None, description="RUN_DIR/level_K of an IMP run on this run's data, at the same "
                                                        "sparsity: shown beside the ticket; its level_0 decides "
                                                        "'matching'")
    matching_tolerance: float = Field(0.0, ge=0, description="relative slack on the dense E (or FID) of compare_with's "
                                                             "run for 'matching'")

    def resolve(self, cfg: Config) -> None:
        if not self.transfer_from:
            raise ValueError("prune.transfer_from: name the ticket to train, RUN_DIR/level_K of a distst imp run")

    def input_problems(self, cfg: Config, run_dir: Path) -> list[str]:
        return ticket_problems(cfg, run_dir)


# --- the source: reading and checking it --------------------------------------------------------------------

def _level_number(key: str, path: Path) -> int:
    found = _LEVEL.fullmatch(path.name)
    if not path.is_dir() or found is None:
        what = "does not exist" if not path.exists() else "is not a level directory"
        raise ConfigError(f"{key}={path}: {what} (give RUN_DIR/level_K of a distst imp run)")
    return int(found.group(1))


def source_config(key: str, level: Path) -> dict[str, Any]:
    """The stored config of the IMP run ``level`` belongs to: the level's own, else the run's (plain data)."""
    path = level / "config.yaml" if (level / "config.yaml").is_file() else stored_config(level.parent)
    if path is None:
        raise ConfigError(f"{key}={level}: no config.yaml in it or in {level.parent}: not a level of a distst imp run")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict) or not isinstance(tree.get("model"), dict):
        raise ConfigError(f"{key}={level}: {path} is not a distst config")
    return tree


def read_mask(key: str, level: Path) -> Masks:
    path = level / MASK_FILE
    if not path.is_file():
        raise ConfigError(f"{key}={level}: no {MASK_FILE} there (the level's pruning step has not run)")
    try:
        return read_state_dict(path)  # weights_only: nothing in the file is run
    except DiststError as err:
        raise ConfigError(f"{key}={level}: {err}") from None


def _model_keys_differing(cfg: Config, source: dict[str, Any]) -> str:
    """The model keys that set the layers' shapes and differ from the source's, as a hint (may be empty)."""
    ours = cfg.model.model_dump(mode="json")
    keys = [k for k in ("width", "plan", *sorted(source["model"])) if k in ours and k in source["model"]]
    differ = [k for k in dict.fromkeys(keys) if source["model"][k] != ours[k]][:3]
    return "".join(f"; model.{k}: {source['model'][k]!r} there, {ours[k]!r} here" for k in differ)


def _shapes_model(cfg: Config) -> Any:
    """This run's model, for its layers' shapes: on the meta device (nothing allocated) when it builds there."""
    section = cfg.model
    if section.init_from:
        from ..train.loop import with_init_plan  # the trainer takes model.init_from's plan

        section = with_init_plan(cfg).model
    try:
        with torch.device("meta"):
            return create(section, weights=False)
    except (RuntimeError, NotImplementedError):  # not a stub: some models read values while they initialise
        # (CycleGAN's image pools call .item(); an op without a meta kernel raises NotImplementedError), so
        # those build for real, once, at preflight
        return create(section, weights=False)


def _check_level(cfg: Config, key: str, value: str, model: Any) -> Masks:
    """The mask of ``value``, a level of an IMP run of this run's model that fits this run's layers; else one line."""
    level = Path(value)
    _level_number(key, level)
    source = source_config(key, level)
    name = source["model"].get("name")
    if name != cfg.model.name:
        raise ConfigError(f"{key}={value}: its mask is of model {name}, this run is {cfg.model.name}")
    masks = read_mask(key, level)
    problem = mask_mismatch(masks, model)
    if problem is not None:
        raise ConfigError(f"{key}={value}: {problem}{_model_keys_differing(cfg, source)}")
    return masks


def start_weights_path(cfg: Config) -> Path | None:
    """The source file the ticket's weights start from (None for ``init``)."""
    level = Path(cfg.prune.transfer_from)
    return {"rewind": level_dir(level.parent, 0) / REWIND_FILE, "trained": level / "model.pt"}.get(
        cfg.prune.transfer_weights)


def read_start_weights(cfg: Config) -> dict[str, torch.Tensor] | None:
    path = start_weights_path(cfg)
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"prune.transfer_weights={cfg.prune.transfer_weights}: {path} does not exist "
                          f"(prune.transfer_weights=init starts from this run's own initialisation)")
    try:
        if cfg.prune.transfer_weights == "trained":
            return read_model_file(path)[1]
        return read_state_dict(path)
    except DiststError as err:
        raise ConfigError(f"prune.transfer_weights={cfg.prune.transfer_weights}: {err}") from None


def _check_source(cfg: Config) -> None:
    model = _shapes_model(cfg)
    masks = _check_level(cfg, "prune.transfer_from", cfg.prune.transfer_from, model)
    if not sparsity_report(masks)["sparsity"]:
        raise ConfigError(f"prune.transfer_from={cfg.prune.transfer_from}: the dense level (no weight pruned): name a "
                          "pruned level, level_1 ... level_N")
    start = read_start_weights(cfg)
    problem = next(iter(mismatches(model.state_dict(), start)), None) if start is not None else None
    if problem is not None:
        raise ConfigError(f"prune.transfer_weights={cfg.prune.transfer_weights}: {start_weights_path(cfg)} does not "
                          f"fit this run's {cfg.model.name}: {problem}")
    if cfg.prune.compare_with:
        _check_level(cfg, "prune.compare_with", cfg.prune.compare_with, model)


def ticket_problems(cfg: Config, run_dir: Path) -> list[str]:
    """The preflight's line about the transferred ticket (none when it fits). A run that has copied its ticket
    already (its mask step is done) never reads the source again, so the source may since have moved."""
    problems = []
    if cfg.distill.enabled:  # the driver distils from a run's first (dense) train step: a transfer run has none
        problems.append("distill.*: prune.method=transfer trains one ticket, with no dense step to distil from")
    if record_path(run_dir, MASK_STEP).is_file():
        return problems
    try:
        _check_source(cfg)
    except ConfigError as err:
        problems.append(str(err))
    return problems


# --- the run --------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _data_of(tree: dict[str, Any]) -> dict[str, Any]:
    data = tree.get("data") or {}
    return {k: data.get(k) for k in ("content", "style", "eval_content", "eval_style")}


def provenance(cfg: Config, masks: Masks) -> Record:
    """Where the ticket ``masks`` come from: the level, its run, model, sparsity, mask checksum and the data it was
    found on."""
    level = Path(cfg.prune.transfer_from)
    source = source_config("prune.transfer_from", level)
    found = record_path(level.parent, level.name)
    verdict = model_class(cfg.model.name).verdict_metric
    values = level_values(json.loads(found.read_text())) if found.is_file() else {}
    return {"path": cfg.prune.transfer_from, "resolved": str(level.resolve()), "run": str(level.parent),
            "level": _level_number("prune.transfer_from", level), "model": source["model"]["name"],
            "width": source["model"].get("width"), "sparsity": sparsity_report(masks)["sparsity"],
            "mask_sha256": _sha256(level / MASK_FILE), "data": _data_of(source),
            "method": (source.get("prune") or {}).get("method"),
            "rewind_step": (source.get("prune") or {}).get("rewind_step"),
            "control": (source.get("prune") or {}).get("control"),
            # the ticket on the task it was found on, when that level has finished
            **({f"source_{verdict}": values[verdict]} if verdict in values else {})}


class TransferSchedule(Schedule):
    """Copy the ticket (mask and starting weights) into ``ticket/``, then train it there with the mask fixed."""

    kind = "transfer"

    @classmethod
    def validate(cls, cfg: Config) -> None:
        problems = ticket_problems(cfg, cfg.run_dir())
        if problems:
            raise ConfigError(problems[0])

    @property
    def folder(self) -> Path:
        return self.run_dir / TICKET_DIR

    def steps(self) -> list[Step]:
        init = None if self.cfg.prune.transfer_weights == "init" else self._init
        return [PruneStep(MASK_STEP, lambda folder, _records: self._copy(folder), dir=TICKET_DIR),
                TrainStep(TRAIN_STEP, self.cfg.train.steps, self._method, init_state=init, dir=TICKET_DIR)]

    def _masks(self) -> Masks:
        return dict(torch.load(self.folder / MASK_FILE, weights_only=True))

    def _copy(self, folder: Path) -> Record:
        masks = read_mask("prune.transfer_from", Path(self.cfg.prune.transfer_from))
        source = provenance(self.cfg, masks)
        atomic.torch_save(masks, folder / MASK_FILE)
        start = read_start_weights(self.cfg)
        if start is not None:
            atomic.torch_save(start, folder / START_FILE)
        return {"level": source["level"], "sparsity": source["sparsity"], "source": source}

    def _method(self, folder: Path) -> Method:
        return MaskedTraining(self._masks())  # the one mask machinery: IMP's levels hold their masks the same way

    def _init(self) -> dict[str, torch.Tensor]:
        return masked_state(torch.load(self.folder / START_FILE, weights_only=True), self._masks())

    def describe(self, step: Step, step_dir: Path, result: Any) -> Record:
        if not isinstance(step, TrainStep):
            return {}
        masks = self._masks()
        found = trained_record(self.cfg, step_dir, masks)
        section, state = read_model_file(step_dir)
        trained = create(section, weights=state, source=str(step_dir / "model.pt"))
        return {"level": _level_number("prune.transfer_from", Path(self.cfg.prune.transfer_from)), **found,
                "off_mask_nonzero": off_mask_nonzero(trained, masks)}

    def summary(self, records: list[Record]) -> dict[str, Any]:
        return transfer_summary(self.cfg, records)


def transfer_summary(cfg: Config, records: list[Record]) -> dict[str, Any]:
    """``summary.json``: where the ticket came from, what it was trained on, its evaluation, and the comparison."""
    verdict = model_class(cfg.model.name).verdict_metric
    copied = next((r for r in records if r["kind"] == "prune"), {})
    trained = next((r for r in records if r["kind"] == "train"), None)
    ticket = {**evaluation_row(level_values(trained)), "steps": trained["steps"], "wall_s": trained["wall_s"],
              "off_mask_nonzero": trained["off_mask_nonzero"], "sparsity_groups": trained["sparsity_groups"]} \
        if trained else None
    compared = comparison(cfg.prune.compare_with, verdict) if cfg.prune.compare_with else None
    dense = (compared or {}).get(f"dense_{verdict}")
    matching = (bool(ticket[verdict] <= dense * (1.0 + cfg.prune.matching_tolerance))
                if ticket is not None and dense is not None and verdict in ticket else None)
    return {
        "model": cfg.model.name, "method": "transfer", "verdict": verdict, "transfer_weights": cfg.prune.transfer_weights,
        "source": copied.get("source"), "data": _data_of(cfg.model_dump(mode="json")), "steps": cfg.train.steps,
        "eval_size": cfg.data.eval_size or cfg.data.crop, "eval_pairs": cfg.data.eval_pairs,
        "ticket": ticket, "compare": compared, "matching_tolerance": cfg.prune.matching_tolerance,
        "matching": matching,
    }


TransferSection.schedule_class = TransferSchedule
