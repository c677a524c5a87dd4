"""Clips with known flow: ``FlowClip``, the synthetic set every run reports on, and clips read from flow files.

Synthetic clips have exact flow by construction, so their warping error measures the stylisation alone:

- ``shift_clip``: crops of a still that pan, so the content moves by an integer (dx, dy) per frame;
- ``smooth_flow_clip``: frames made backwards from the last one by warping with a smooth random flow.

The stills are the six different photos that open the bundled content shard (``distst.data.bundled``): no
download, no optional package, decoded once per process.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.bundled import sample_location
from ..images import IMAGE_SUFFIXES, load_image, pil_to_tensor, resize, save_image, to_rgb
from .flow import (
    forward_backward_mask,
    in_bounds_mask,
    raft_flows,
    read_flow,
    smooth_random_flow,
    warp,
    write_flo,
)
from .io import ClipError

STILLS_SHARD = "content-000000.tar"
STILLS = 6  # the shard opens with six different photos (variants follow): see sample_shards/README.md
FLOW_SUFFIXES = {".flo", ".npy"}
# Smooth flows are rounded to 1/256 px: x + flow is then exact in float32, so warping the crop samples exactly
# as warping the larger canvas did, and the clip's warp equation holds to the bit.
FLOW_STEPS = 256.0
NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a file name


@dataclass
class FlowClip:
    """Frames (T, 3, H, W) in [0, 1], flows (T-1, 2, H, W) (``flows[t]``: frame t -> t+1, Sintel's forward flow)
    and masks (T-1, 1, H, W) (1 where frame t's pixel is visible in frame t+1: in bounds, not occluded)."""

    frames: Tensor
    flows: Tensor
    masks: Tensor
    name: str

    def __post_init__(self) -> None:
        t, _, h, w = self.frames.shape if self.frames.dim() == 4 else (0, 0, 0, 0)
        expected = {"frames": (t, 3, h, w), "flows": (t - 1, 2, h, w), "masks": (t - 1, 1, h, w)}
        for field, shape in expected.items():
            if t < 2 or tuple(getattr(self, field).shape) != shape:
                raise ClipError(f"clip {self.name!r}: frames {tuple(self.frames.shape)}, flows "
                                f"{tuple(self.flows.shape)}, masks {tuple(self.masks.shape)}; need (T >= 2, 3, H, W), "
                                "(T-1, 2, H, W), (T-1, 1, H, W)")


# --- synthetic clips ----------------------------------------------------------------------------------

def _check_still(still: Tensor, need_h: int, need_w: int, what: str) -> None:
    if still.dim() != 3 or still.shape[0] != 3:
        raise ClipError(f"a still is one (3, H, W) image; got {tuple(still.shape)}")
    height, width = still.shape[-2:]
    if height < need_h or width < need_w:
        raise ClipError(f"a still of {width}x{height} is too small for {what}: it needs at least "
                        f"{need_w}x{need_h} (resize it up)")


def _centre(still: Tensor, height: int, width: int) -> Tensor:
    top, left = (still.shape[-2] - height) // 2, (still.shape[-1] - width) // 2
    return still[:, top:top + height, left:left + width]


def shift_clip(still: Tensor, frames: int, size: int, dx: int, dy: int, name: str = "shift") -> FlowClip:
    """``frames`` size x size crops of ``still`` whose content moves by (dx, dy) px a frame: the window pans by
    (-dx, -dy), so ``frames[t + 1][y + dy, x + dx] == frames[t][y, x]`` and every flow is the constant (dx, dy).

    The crops all lie inside the still (centred on it); the mask is the overlap of consecutive frames (the
    pixels whose x + (dx, dy) stays in the frame). Raises ``ClipError`` for a still too small for the pan.
    """
    if frames < 2:
        raise ClipError(f"a clip needs at least 2 frames; got {frames}")
    span_w, span_h = size + (frames - 1) * abs(dx), size + (frames - 1) * abs(dy)
    _check_still(still, span_h, span_w, f"{frames} frames of {size} px panning by ({dx}, {dy})")
    # The window of frame t starts at origin - t * d: put origin at the far end of the span for positive steps.
    area = _centre(still, span_h, span_w)
    left, top = (frames - 1) * max(dx, 0), (frames - 1) * max(dy, 0)
    crops = [area[:, top - t * dy:top - t * dy + size, left - t * dx:left - t * dx + size] for t in range(frames)]
    flows = torch.tensor([float(dx), float(dy)], dtype=still.dtype).view(1, 2, 1, 1)
    flows = flows.expand(frames - 1, 2, size, size).contiguous()
    return FlowClip(torch.stack(crops), flows, in_bounds_mask(flows), name)


def smooth_flow_margin(frames: int, magnitude: float) -> int:
    """Pixels around the crop that ``smooth_flow_clip`` warps too: each backward warp pulls the canvas's outside
    zeros in by at most ``magnitude + 1`` px, and none may reach the crop."""
    return math.ceil((frames - 1) * (abs(magnitude) + 1)) + 1


def smooth_flow_clip(still: Tensor, frames: int, size: int, magnitude: float, seed: int,
                     name: str = "smooth") -> FlowClip:
    """``frames`` size x size frames with exact smooth flow: the last is the still's centre crop and
    ``frame_t = warp(frame_{t+1}, flow_t)``, ``flow_t`` a smooth random flow (``smooth_random_flow``, largest
    component ``magnitude`` px, drawn from ``seed``; rounded to 1/256 px).

    The warps run on a canvas ``smooth_flow_margin`` px larger on every side, so the frames have no black
    borders; the mask is the in-bounds mask of each flow, and ``warp(frames[t+1], flows[t]) == frames[t]``
    exactly where it is 1. Raises ``ClipError`` for a still smaller than the canvas.
    """
    if frames < 2:
        raise ClipError(f"a clip needs at least 2 frames; got {frames}")
    margin = smooth_flow_margin(frames, magnitude)
    side = size + 2 * margin
    _check_still(still, side, side, f"{frames} frames of {size} px with {magnitude} px of smooth flow")
    canvas = _centre(still, side, side).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    flows = smooth_random_flow(frames - 1, side, side, magnitude, generator, dtype=still.dtype)
    flows = (flows * FLOW_STEPS).round() / FLOW_STEPS
    canvases = [canvas]
    for t in reversed(range(frames - 1)):
        canvases.insert(0, warp(canvases[0], flows[t:t + 1]))
    crop = slice(margin, margin + size)
    flows = flows[..., crop, crop].contiguous()
    return FlowClip(torch.cat(canvases)[..., crop, crop].contiguous(), flows, in_bounds_mask(flows), name)


@functools.cache
def _stills() -> tuple[tuple[str, Tensor], ...]:
    """(photo name, 3 x H x W) of the first ``STILLS`` samples of the bundled content shard, decoded once."""
    path = sample_location() / STILLS_SHARD
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            stem, _, ext = member.name.partition(".")
            if member.isreg() and ext in ("jpg", "json"):
                members.setdefault(stem, {})[ext] = archive.extractfile(member).read()
    stills = []
    for key in sorted(members)[:STILLS]:
        source = json.loads(members[key]["json"])["source"]  # e.g. "1-full-astronaut.png"
        with Image.open(io.BytesIO(members[key]["jpg"])) as img:
            image = pil_to_tensor(to_rgb(img))
        stills.append((Path(source).stem.removeprefix("1-full-"), image))
    if len(stills) < STILLS:
        raise ClipError(f"{path} holds {len(stills)} photos; the synthetic clips need {STILLS}: reinstall distst")
    return tuple(stills)


def _still(index: int, min_side: int) -> tuple[str, Tensor]:
    name, image = _stills()[index % STILLS]
    if min(image.shape[-2:]) < min_side:
        image = resize(image, min_side).clamp(0, 1)
    return name, image


def synthetic_clips(count: int = 2, frames: int = 4, size: int = 64, seed: int = 0) -> list[FlowClip]:
    """The fixed synthetic clip set: alternately a shift clip and a smooth-flow clip, clip i from bundled photo
    ``seed + i`` (of six), motion scaled with ``size`` (shifts of 1..size/16 px, smooth flow of size/32 px).

    A pure function of its arguments: the same tensors in every process and on every machine.
    """
    generator = torch.Generator().manual_seed(seed)
    step = max(1, size // 32)
    magnitude = max(1.0, size / 32)
    clips = []
    for i in range(count):
        if i % 2 == 0:
            dx, dy = (int(v) for v in torch.randint(1, 2 * step + 1, (2,), generator=generator))
            sx, sy = (int(v) * 2 - 1 for v in torch.randint(0, 2, (2,), generator=generator))
            dx, dy = dx * sx, dy * sy
            photo, still = _still(seed + i, size + (frames - 1) * max(abs(dx), abs(dy)))
            clips.append(shift_clip(still, frames, size, dx, dy, name=f"shift{i}-{photo}"))
        else:
            flow_seed = int(torch.randint(1 << 62, (1,), generator=generator))
            photo, still = _still(seed + i, size + 2 * smooth_flow_margin(frames, magnitude))
            clips.append(smooth_flow_clip(still, frames, size, magnitude, flow_seed, name=f"smooth{i}-{photo}"))
    return clips


# --- clips on disk ------------------------------------------------------------------------------------

def _file_name(index: int, suffix: str) -> str:
    return f"frame_{index:06d}{suffix}"


def _number(path: Path) -> int:
    match = NUMBER.search(path.stem)
    if match is None:
        raise ClipError(f"{path}: no frame number in the file name (expected e.g. frame_0001{path.suffix})")
    return int(match.group(1))


def _numbered(folder: Path, suffixes: set[str], what: str) -> list[Path]:
    """The files of ``folder`` with one of ``suffixes``, sorted by the number in their names."""
    if not folder.is_dir():
        raise ClipError(f"{what} folder {folder} does not exist")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=_number)
    numbers = [_number(p) for p in files]
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise ClipError(f"{folder}: two {what} files have the number {twice}; keep one file per frame")
    return files


def _numbered_pairs(folder: Path, suffixes: set[str], what: str, frames: int) -> list[Path]:
    files = _numbered(folder, suffixes, what)
    if len(files) != frames - 1:
        raise ClipError(f"{folder}: {len(files)} {what} files ({', '.join(sorted(suffixes))}) for {frames} frames; "
                        f"need {frames - 1}, one per frame pair (the k-th for frame k -> k+1)")
    return files


def _read_flows(folder: Path, what: str, frames: Tensor) -> Tensor:
    flows = []
    for path in _numbered_pairs(folder, FLOW_SUFFIXES, what, len(frames)):
        flow = read_flow(path)
        if flow.shape[-2:] != frames.shape[-2:]:
            raise ClipError(f"{path}: flow of {flow.shape[-1]}x{flow.shape[-2]} for frames of "
                            f"{frames.shape[-1]}x{frames.shape[-2]}")
        flows.append(flow)
    return torch.stack(flows).to(frames.device, frames.dtype)


def _read_masks(folder: Path, frames: Tensor, occluded_is_white: bool) -> Tensor:
    masks = []
    for path in _numbered_pairs(folder, IMAGE_SUFFIXES, "mask", len(frames)):
        with Image.open(path) as img:
            white = np.asarray(img.convert("L")) >= 128
        if white.shape != tuple(frames.shape[-2:]):
            raise ClipError(f"{path}: mask of {white.shape[1]}x{white.shape[0]} for frames of "
                            f"{frames.shape[-1]}x{frames.shape[-2]}")
        masks.append(torch.from_numpy(~white if occluded_is_white else white))
    return torch.stack(masks).unsqueeze(1).to(frames.device, frames.dtype)


def load_flow_clip(frames: Tensor, flow_dir: Path, mask_dir: Path | None = None, backward_dir: Path | None = None,
                   name: str = "clip", occluded_is_white: bool = True) -> FlowClip:
    """A user's clip: frames (T, 3, H, W) in [0, 1] with the flow files of ``flow_dir`` (Sintel's layout:
    ``frame_0001.flo`` is the flow from frame 1 to 2; ``.flo`` or ``.npy``; sorted by the number in the name;
    exactly T-1 of them).

    The mask, times the in-bounds mask of each flow, comes from the first of:
    ``mask_dir``'s images (Sintel's ``occlusions/`` mark OCCLUDED pixels white: ``occluded_is_white=True``, the
    default; the ``masks/`` that ``write_flow_clip`` writes mark VALID pixels white: read them back with
    ``occluded_is_white=False``, as ``read_flow_clip`` does); the forward-backward check against
    ``backward_dir``'s flows (the k-th for frame k+1 -> k); else the in-bounds mask alone.
    Raises ``ClipError`` / ``FlowError`` naming the file for a missing, extra or wrongly sized file.
    """
    if frames.dim() != 4 or frames.shape[0] < 2 or frames.shape[1] != 3:
        raise ClipError(f"clip {name!r}: frames must be (T >= 2, 3, H, W); got {tuple(frames.shape)}")
    flows = _read_flows(Path(flow_dir), "flow", frames)
    if mask_dir is not None:
        masks = _read_masks(Path(mask_dir), frames, occluded_is_white) * in_bounds_mask(flows)
    elif backward_dir is not None:
        masks = forward_backward_mask(flows, _read_flows(Path(backward_dir), "backward flow", frames))
    else:
        masks = in_bounds_mask(flows)
    return FlowClip(frames, flows, masks, name)


def raft_flow_clip(frames: Tensor, raft: nn.Module, name: str = "clip", iters: int = 12) -> FlowClip:
    """A clip whose flows RAFT estimates (``flow.raft_flows``), masked by the forward-backward check."""
    forward, backward = raft_flows(raft, frames, iters=iters)
    return FlowClip(frames, forward, forward_backward_mask(forward, backward), name)


def _write_mask(mask: Tensor, path: Path) -> None:
    valid = (mask[0].detach().cpu() > 0.5).numpy().astype(np.uint8) * 255
    Image.fromarray(valid).save(path)  # 2-D uint8: mode L


def _write_numbered(folder: Path, suffix: str, items: Tensor, write: Callable[[Tensor, Path], object]) -> None:
    """``write(items[k - 1], folder / frame_00000k<suffix>)`` for every item; files of ours numbered beyond them
    (an earlier, longer clip) are removed, so that reading the folder back finds this clip only."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"frame_*{suffix}"):
        if re.fullmatch(rf"frame_\d{{6}}{re.escape(suffix)}", stale.name) and _number(stale) > len(items):
            stale.unlink()
    for index, item in enumerate(items, 1):
        write(item, folder / _file_name(index, suffix))


def write_flow_clip(out_dir: Path, clip: FlowClip) -> Path:
    """Write ``clip`` under ``out_dir`` (returned): ``frames/frame_000001.png``..., ``flow/frame_000001.flo``...
    (frame k -> k+1) and ``masks/frame_000001.png``... (8-bit, white = VALID, unlike Sintel's occlusions).

    Frames are stored as 8-bit PNG (synthetic shift clips are 8-bit already and round-trip exactly); flows as
    float32, exactly. Read it back with ``read_flow_clip(out_dir)``.
    """
    out_dir = Path(out_dir)
    _write_numbered(out_dir / "frames", ".png", clip.frames, save_image)
    _write_numbered(out_dir / "flow", ".flo", clip.flows, lambda flow, path: write_flo(path, flow))
    _write_numbered(out_dir / "masks", ".png", clip.masks, _write_mask)
    return out_dir


def read_flow_clip(folder: Path, name: str | None = None) -> FlowClip:
    """A clip ``write_flow_clip`` wrote (``frames/``, ``flow/``, ``masks/`` with white = valid)."""
    folder = Path(folder)
    frames = [load_image(p) for p in _numbered(folder / "frames", IMAGE_SUFFIXES, "frame")]
    if len(frames) < 2 or any(f.shape != frames[0].shape for f in frames):
        raise ClipError(f"{folder / 'frames'}: need at least 2 frames of one size; found "
                        f"{sorted({tuple(f.shape[-2:]) for f in frames})} in {len(frames)} files")
    return load_flow_clip(torch.stack(frames), folder / "flow", folder / "masks", name=name or folder.name,
                          occluded_is_white=False)
