"""One owner of training state: the checkpointer of named stateful objects (its ``load()`` says what it restored),
method state by name, one read of ``model.init_from`` per run, and a run's identity by its files' content."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SAMPLE, tiny_config

from distst.config import ConfigError
from distst.data import bundled
from distst.track import read_metrics
from distst.train import Method, MethodList, StepInputs, TrainContext, loop, train
from distst.train.checkpoint import Checkpointer, CheckpointError, complete_checkpoints, read_manifest
from distst.train.engine import DistInfo

INFO = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


# --- the checkpointer, with engines that write one file each ---------------------------------------------------

class FileEngine:
    """What the checkpointer asks of a DeepSpeed engine: save_checkpoint / load_checkpoint by tag."""

    def __init__(self, value: float = 0.0) -> None:
        self.value, self.broken = value, set()

    def save_checkpoint(self, folder: str, tag: str, save_latest: bool = False) -> None:
        (Path(folder) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"value": self.value}, Path(folder) / tag / "engine.pt")

    def load_checkpoint(self, folder: str, tag: str, **_: Any) -> tuple[str | None, dict]:
        if Path(folder).name in self.broken:
            raise KeyError("not what this engine wrote")
        self.value = torch.load(Path(folder) / tag / "engine.pt", weights_only=True)["value"]
        return folder, {}


class Box:
    def __init__(self, value: Any = None) -> None:
        self.value = value

    def state_dict(self) -> Any:
        return {"value": self.value}

    def load_state_dict(self, state: Any) -> None:
        self.value = state["value"]


def test_checkpointer_saves_named_objects_in_the_files_of_before_and_load_returns_what_it_restored(
        tmp_path: Path) -> None:
    engine, method, position = FileEngine(1.0), Box("m1"), Box(11)
    ckpt = Checkpointer(tmp_path, INFO, {"main": engine}, shared={"method": method},
                        per_rank={"data_position": position}, keep=2)
    assert ckpt.load() is None  # a fresh start
    ckpt.save(2, {"train_s": 1.0})
    engine.value, method.value, position.value = 2.0, "m2", 22
    newest = ckpt.save(4, {"train_s": 2.0})
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    assert set(read_manifest(newest)["files"]) == {"main/engine.pt", "rng_rank0.pt", "state.pt"}
    saved = torch.load(newest / "state.pt", weights_only=True)
    assert saved == {"train_s": 2.0, "step": 4, "method": {"value": "m2"}}  # as the loop always wrote it
    assert torch.load(newest / "rng_rank0.pt", weights_only=True)["data_position"] == {"value": 22}

    fresh = [FileEngine(), Box(), Box()]
    again = Checkpointer(tmp_path, INFO, {"main": fresh[0]}, shared={"method": fresh[1]},
                         per_rank={"data_position": fresh[2]})
    restored = again.load()
    assert (restored.path, restored.step, restored.state) == (newest, 4, {"train_s": 2.0, "step": 4})
    assert restored.names == ("method", "data_position")
    assert (fresh[0].value, fresh[1].value, fresh[2].value) == (2.0, "m2", 22)

    # The newest cannot be loaded: the returned checkpoint is the one restored, its objects those of step 2.
    fresh[0].broken.add("step_00000004")
    restored = again.load()
    assert (restored.path.name, restored.step, fresh[1].value, fresh[2].value) == ("step_00000002", 2, "m1", 11)

    older = Checkpointer(tmp_path, INFO, {"main": FileEngine()}, shared={"method": Box()},
                         per_rank={"model_rank_state": Box("untouched")})  # a name the checkpoint lacks
    assert older.load().names == ("method",)


def test_checkpointer_refuses_one_name_for_two_objects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names used twice"):
        Checkpointer(tmp_path, INFO, {}, shared={"x": Box()}, per_rank={"x": Box()})


# --- method state by name -----------------------------------------------------------------------------------

class Counter(Method):
    """Counts its optimizer steps (its checkpointed state) from a start value."""

    def __init__(self, start: int = 0, name: str | None = None) -> None:
        self.count = start
        if name:
            self.name = name

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class Other(Counter):
    pass


def test_method_state_is_keyed_by_name_and_reordering_loads_the_right_state() -> None:
    saved = MethodList([Counter(5), Other(7)]).state_dict()
    assert saved == {"Counter": {"count": 5}, "Other": {"count": 7}}
    a, b = Counter(), Other()
    MethodList([b, a]).load_state_dict(saved)
    assert (a.count, b.count) == (5, 7)
    c, d = Counter(), Other()
    MethodList([c, d]).load_state_dict({"0": {"count": 1}, "1": {"count": 2}})  # saved by position (older)
    assert (c.count, d.count) == (1, 2)
    # Nesting does not matter either: a run stopped with a stateless stopper around its list resumes without it.
    nested = MethodList([MethodList([Counter(3), Other(4)]), Named("StopAt", ())]).state_dict()
    assert nested == {"Counter": {"count": 3}, "Other": {"count": 4}, "StopAt": {}}
    e, f = Counter(), Other()
    MethodList([f, e]).load_state_dict(nested)
    assert (e.count, f.count) == (3, 4)


def test_method_names_that_do_not_match_the_checkpoint_are_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"holds the state of methods \['Counter', 'Other'\], this run's are "
                                              r"\['Counter', 'renamed'\]; no method here for Other; nothing saved "
                                              r"for renamed"):
        MethodList([Counter(), Counter(name="renamed")]).load_state_dict({"Counter": {"count": 1},
                                                                          "Other": {"count": 2}})
    with pytest.raises(ValueError, match="two methods are named Counter"):
        MethodList([Counter(), MethodList([Other(), Counter()])])
    assert Counter(name="b").name == "b" and Method().name == "Method"


class Named(Method):
    def __init__(self, name: str, losses: tuple[str, ...]) -> None:
        self.name, self.losses = name, losses

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {key: torch.zeros(()) for key in self.losses}


def test_duplicate_extra_loss_names_across_methods_are_refused() -> None:
    inputs = StepInputs("main", (), {})
    both = MethodList([Named("a", ("l1", "gate")), Named("b", ("l1",))])
    with pytest.raises(ValueError, match="methods a and b both return an extra loss named 'l1'"):
        both.extra_losses(None, inputs)  # type: ignore[arg-type]
    assert set(MethodList([Named("a", ("l1",)), Named("b", ("l2",))]).extra_losses(None, inputs)) == {"l1", "l2"}  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_resume_with_the_methods_reordered_gives_each_its_own_state(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first, second = Counter(0), Other(100)
    train(tiny_config(out, train__steps=2), out, MethodList([first, second]))
    assert (first.count, second.count) == (2, 102)
    first, second = Counter(0), Other(0)
    train(tiny_config(out, train__steps=4), out, MethodList([second, first]))
    assert (first.count, second.count) == (4, 104)
    with pytest.raises(CheckpointError, match="no method here for Other"):
        train(tiny_config(out, train__steps=6), out, MethodList([Counter(), Counter(name="x")]))


# --- model.init_from: read once, planned once -----------------------------------------------------------------

@pytest.mark.slow
def test_init_from_is_read_once_and_planned_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    train(tiny_config(source, train__steps=1), source)
    reads, plans = [], []
    read, plan = loop.read_model_file, loop.with_init_plan
    monkeypatch.setattr(loop, "read_model_file", lambda path: reads.append(path) or read(path))
    monkeypatch.setattr(loop, "with_init_plan", lambda *a, **k: plans.append(a) or plan(*a, **k))
    out = tmp_path / "run"
    train(tiny_config(out, train__steps=1, model__init_from=str(source / "model.pt")), out)
    assert reads == [str(source / "model.pt")] and len(plans) == 1


# --- identity by content ------------------------------------------------------------------------------------

def copy_sample_shards(to: Path, manifests: bool = True) -> Path:
    to.mkdir(parents=True)
    for file in SAMPLE.iterdir():
        if file.suffix == ".tar" or (manifests and file.suffix == ".json"):
            shutil.copy2(file, to / file.name)
    return to


@pytest.mark.parametrize("manifests", [True, False])
def test_the_run_hash_is_that_of_the_files_content_not_their_path(tmp_path: Path, manifests: bool) -> None:
    weights = tmp_path / "a" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"some weights")
    base = tiny_config(tmp_path / "out", model__init_from=str(weights), data__content=bundled.CONTENT,
                       data__style=bundled.STYLE)
    moved = tmp_path / "b" / "elsewhere.pt"
    moved.parent.mkdir()
    shutil.copy2(weights, moved)
    shards = copy_sample_shards(tmp_path / "shards", manifests)
    elsewhere = tiny_config(tmp_path / "other_out", model__init_from=str(moved),
                            data__content=str(shards / "content-{000000..000001}.tar"),
                            data__style=str(shards / "style-{000000..000001}.tar"))
    assert base.data.content.startswith(bundled.PREFIX)
    assert elsewhere.config_hash() == base.config_hash()
    moved.write_bytes(b"other weights")
    assert elsewhere.config_hash() != base.config_hash()
    one_shard = tiny_config(tmp_path / "out", model__init_from=str(weights), data__style=bundled.STYLE,
                            data__content=str(shards / "content-000000.tar"))
    assert one_shard.config_hash() != base.config_hash()


@pytest.mark.slow
def test_moved_files_resume_and_files_of_other_content_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(tiny_config(source, train__steps=1), source)
    here, there = tmp_path / "scratch1" / "init.pt", tmp_path / "scratch2" / "init.pt"
    here.parent.mkdir()
    shutil.copy2(source / "model.pt", here)
    out = tmp_path / "run"
    first = tiny_config(out, train__steps=2, model__init_from=str(here))
    train(first, out)
    recorded = json.loads((out / "inputs.json").read_text())
    assert recorded["model.init_from"]["path"] == str(here)

    shutil.move(here.parent, there.parent)  # weights and shards on another file system
    shards = copy_sample_shards(tmp_path / "shards")
    moved = {"model__init_from": str(there), "data__content": str(shards / "content-{000000..000001}.tar")}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(tiny_config(out, train__steps=4, **moved), out)
    assert not [w for w in seen if "data position" in str(w.message)]  # the stream continues where it was
    change = [row["config_changed"] for row in read_metrics(out / "metrics.jsonl") if "config_changed" in row]
    assert change == [{"train.steps": {"from": 2, "to": 4}, "data.content": {"from": first.data.content,
                                                                             "to": moved["data__content"]},
                       "model.init_from": {"from": str(here), "to": str(there)}}]

    shutil.copy2(out / "model.pt", there)  # other weights under the same path
    with pytest.raises(ConfigError, match=r"changed: model.init_from \(the content of .*init.pt differs from the "
                                          r"run's: sha256 [0-9a-f]{12} -> [0-9a-f]{12}\)"):
        train(tiny_config(out, train__steps=6, **moved), out)
