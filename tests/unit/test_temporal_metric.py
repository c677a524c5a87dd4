"""The warping error in closed forms (0 for exact flow, 2 sigma^2 for independent noise), and the clips it runs on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distst.images import load_image
from distst.video.clips import (
    ClipError,
    FlowClip,
    load_flow_clip,
    raft_flow_clip,
    read_flow_clip,
    shift_clip,
    smooth_flow_clip,
    synthetic_clips,
    write_flow_clip,
)
from distst.video.flow import FlowError, in_bounds_mask, warp, write_flo
from distst.video.temporal import temporal_errors, warping_error


def still(height: int = 96, width: int = 120, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def noisy(frames: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    return frames + sigma * torch.randn(frames.shape, generator=torch.Generator().manual_seed(seed))


# --- the metric ---------------------------------------------------------------------------------------

def test_identity_stylizer_has_no_warping_error() -> None:
    clips = synthetic_clips(count=4, frames=4, size=64)
    shift = [c for c in clips if c.name.startswith("shift")]
    smooth = [c for c in clips if c.name.startswith("smooth")]
    assert len(shift) == len(smooth) == 2
    for errors in (temporal_errors(lambda x: x, shift), temporal_errors(lambda x: x, smooth, batch_size=3)):
        assert set(errors) == {"temporal_error", "temporal_l1", "output_std"}
        assert errors["temporal_error"] < 1e-10 and errors["temporal_l1"] < 1e-5
    expected = sum(float(c.frames.double().flatten(2).std(2).mean()) for c in shift) / len(shift)
    assert temporal_errors(lambda x: x, shift)["output_std"] == pytest.approx(expected)


def test_a_flat_output_is_perfectly_stable_and_says_so_by_its_zero_std() -> None:
    errors = temporal_errors(lambda x: torch.full_like(x, 0.3), synthetic_clips(count=2, frames=3, size=32))
    assert errors == {"temporal_error": 0.0, "temporal_l1": 0.0, "output_std": 0.0}


def test_independent_noise_gives_two_sigma_squared() -> None:
    sigma = 0.05
    clip = shift_clip(still(), frames=6, size=64, dx=3, dy=-2)
    outputs = noisy(clip.frames, sigma)  # unclamped: the lower-level metric takes any values
    assert warping_error(outputs, clip.flows, clip.masks) == pytest.approx(2 * sigma**2, rel=0.03)
    l1 = warping_error(outputs, clip.flows, clip.masks, norm="l1")
    assert l1 == pytest.approx(2 * sigma / math.sqrt(math.pi), rel=0.03)  # E|N(0, 2 sigma^2)|
    # through temporal_errors (clamped to [0, 1]): mid-grey frames keep the noise far from the bounds
    grey = FlowClip(torch.full_like(clip.frames, 0.5), clip.flows, clip.masks, "grey")
    counter = iter(range(100))
    errors = temporal_errors(lambda x: noisy(x, 0.02, seed=next(counter)), [grey], batch_size=2)
    assert errors["temporal_error"] == pytest.approx(2 * 0.02**2, rel=0.05)
    assert errors["temporal_l1"] == pytest.approx(2 * 0.02 / math.sqrt(math.pi), rel=0.05)


def test_a_constant_change_per_frame_is_its_square() -> None:
    clip = shift_clip(still(), frames=4, size=32, dx=-1, dy=2)
    outputs = clip.frames.double() + 0.1 * torch.arange(4, dtype=torch.float64).view(4, 1, 1, 1)  # W(O_{t+1}) - O_t = 0.1 on the mask
    assert warping_error(outputs, clip.flows, clip.masks) == pytest.approx(0.01, abs=1e-12)
    assert warping_error(outputs, clip.flows, clip.masks, norm="l1") == pytest.approx(0.1, abs=1e-12)


def test_masked_pixels_are_excluded_and_empty_pairs_skipped() -> None:
    clip = shift_clip(still(), frames=3, size=32, dx=4, dy=0)
    outputs = noisy(clip.frames, 0.1)
    base = warping_error(outputs, clip.flows, clip.masks)
    garbage = outputs.clone()
    occluded = clip.masks[0, 0] == 0
    assert occluded.any()
    garbage[0][:, occluded] = 1e6  # frame 0 is only ever the target of pair 0
    garbage[0, 0][occluded] = float("inf")
    assert warping_error(garbage, clip.flows, clip.masks) == base
    masks = clip.masks.clone()
    masks[0] = 0
    assert warping_error(outputs, clip.flows, masks) == warping_error(outputs[1:], clip.flows[1:], clip.masks[1:])
    with pytest.raises(ClipError, match="all 2 masks are empty"):
        warping_error(outputs, clip.flows, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="norm must be one of"):
        warping_error(outputs, clip.flows, clip.masks, norm="l3")
    with pytest.raises(ValueError, match=r"flows \(T-1, 2, H, W\)"):
        warping_error(outputs, clip.flows[:1], clip.masks)


def test_stylizer_outputs_are_cropped_and_checked() -> None:
    clip = shift_clip(still(), frames=3, size=32, dx=1, dy=1)
    padded = temporal_errors(lambda x: torch.nn.functional.pad(x, (0, 8, 0, 8), value=5.0), [clip])
    assert padded["temporal_error"] < 1e-12  # padding on the right and bottom is cropped off
    with pytest.raises(ValueError, match="the stylizer returned"):
        temporal_errors(lambda x: x[..., :16, :16], [clip])


# --- clips --------------------------------------------------------------------------------------------

def exact_on_mask(clip: FlowClip) -> bool:
    warped, valid = warp(clip.frames[1:], clip.flows), clip.masks.bool().expand(-1, 3, -1, -1)
    return torch.equal(warped[valid], clip.frames[:-1][valid])


def test_shift_and_smooth_clips_have_exact_flow() -> None:
    shift = shift_clip(still(), frames=4, size=40, dx=-3, dy=5)
    assert shift.frames.shape == (4, 3, 40, 40) and torch.equal(shift.flows[:, :, 7, 9], torch.tensor([[-3.0, 5]] * 3))
    assert torch.equal(shift.masks, in_bounds_mask(shift.flows)) and exact_on_mask(shift)
    assert torch.equal(shift.frames[1][5:, :-3], shift.frames[0][:-5, 3:])  # the content moves by (-3, 5)
    smooth = smooth_flow_clip(still(), frames=4, size=40, magnitude=2.0, seed=3)
    assert smooth.flows.abs().max() <= 2.0 + 1 / 512 and 0.8 < smooth.masks.mean() < 1 and exact_on_mask(smooth)
    assert (smooth.frames != 0).any(dim=1).all()  # the canvas keeps black borders out of the frames
    with pytest.raises(ClipError, match=r"still of 120x96 is too small .* needs at least 121x49"):
        shift_clip(still(), frames=4, size=40, dx=-27, dy=3)
    with pytest.raises(ClipError, match=r"still of 120x96 is too small .* needs at least 100x100"):
        smooth_flow_clip(still(), frames=4, size=80, magnitude=2.0, seed=3)


def test_synthetic_clips_are_deterministic() -> None:
    first, again = synthetic_clips(count=3, frames=4, size=48), synthetic_clips(count=3, frames=4, size=48)
    assert [c.name for c in first] == ["shift0-astronaut", "smooth1-camera", "shift2-chelsea"]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.frames, b.frames) and torch.equal(a.flows, b.flows) and torch.equal(a.masks, b.masks)
        assert a.frames.shape == (4, 3, 48, 48) and a.flows.shape == (3, 2, 48, 48) and a.masks.shape == (3, 1, 48, 48)
        assert a.frames.min() >= 0 and a.frames.max() <= 1 and set(a.masks.unique().tolist()) <= {0.0, 1.0}
        assert a.masks.mean() > 0.7 and exact_on_mask(a)
    first[0].frames.zero_()  # the cached stills are not handed out
    assert torch.equal(synthetic_clips(count=1, frames=4, size=48)[0].frames, again[0].frames)
    other = synthetic_clips(count=3, frames=4, size=48, seed=1)
    assert all(not torch.equal(a.frames, b.frames) for a, b in zip(again, other, strict=True))
    large = synthetic_clips(count=2, frames=3, size=300)  # bigger than the bundled photos: resized up
    assert [c.frames.shape for c in large] == [(3, 3, 300, 300)] * 2


def test_write_and_read_back(tmp_path: Path) -> None:
    clip = synthetic_clips(count=1, frames=4, size=32)[0]  # a shift clip of 8-bit frames: PNG keeps them exact
    folder = write_flow_clip(tmp_path / "clip", clip)
    assert sorted(p.name for p in (folder / "flow").iterdir()) == [f"frame_00000{i}.flo" for i in (1, 2, 3)]
    assert torch.equal(load_image(folder / "frames" / "frame_000002.png"), clip.frames[1])
    back = read_flow_clip(folder)
    assert back.name == "clip" and torch.equal(back.frames, clip.frames)
    assert torch.equal(back.flows, clip.flows) and torch.equal(back.masks, clip.masks)
    # the same files through load_flow_clip: masks/ marks valid pixels white
    loaded = load_flow_clip(clip.frames, folder / "flow", folder / "masks", occluded_is_white=False)
    assert torch.equal(loaded.masks, clip.masks)
    assert torch.equal(load_flow_clip(clip.frames, folder / "flow").masks, in_bounds_mask(clip.flows))
    write_flow_clip(folder, FlowClip(clip.frames[:3], clip.flows[:2], clip.masks[:2], "short"))  # stale files go
    assert len(read_flow_clip(folder).frames) == 3


def test_sintel_layout_occlusions_and_backward_flow(tmp_path: Path) -> None:
    clip = shift_clip(still(), frames=3, size=24, dx=2, dy=1)
    for k in (1, 2):  # Sintel numbers from 1 with 4 digits
        write_flo(tmp_path / "flow" / f"frame_{k:04d}.flo", clip.flows[k - 1])
        write_flo(tmp_path / "back" / f"frame_{k:04d}.flo", -clip.flows[k - 1])
        occluded = np.zeros((24, 24), np.uint8)
        occluded[:4, :4] = 255
        (tmp_path / "occ").mkdir(exist_ok=True)
        Image.fromarray(occluded).save(tmp_path / "occ" / f"frame_{k:04d}.png")
    sintel = load_flow_clip(clip.frames, tmp_path / "flow", tmp_path / "occ", name="s")
    expected = clip.masks.clone()
    expected[..., :4, :4] = 0
    assert torch.equal(sintel.masks, expected)
    checked = load_flow_clip(clip.frames, tmp_path / "flow", backward_dir=tmp_path / "back")
    assert torch.equal(checked.masks, clip.masks)
    with pytest.raises(ClipError, match=r"flow: 2 flow files .* for 4 frames; need 3"):
        load_flow_clip(torch.rand(4, 3, 24, 24), tmp_path / "flow")
    with pytest.raises(ClipError, match=r"frame_0001.flo: flow of 24x24 for frames of 30x24"):
        load_flow_clip(torch.rand(3, 3, 24, 30), tmp_path / "flow")
    with pytest.raises(ClipError, match="mask folder .*nope does not exist"):
        load_flow_clip(clip.frames, tmp_path / "flow", tmp_path / "nope")
    write_flo(tmp_path / "flow" / "frame_1.flo", clip.flows[0])
    with pytest.raises(ClipError, match="two flow files have the number 1"):
        load_flow_clip(clip.frames, tmp_path / "flow")
    (tmp_path / "flow" / "frame_1.flo").write_bytes(b"PIEH")
    (tmp_path / "flow" / "frame_0001.flo").unlink()
    with pytest.raises(FlowError, match=r"frame_1.flo: truncated \.flo file"):
        load_flow_clip(clip.frames, tmp_path / "flow")
    with pytest.raises(ClipError, match=r"clip 'bad': frames"):
        FlowClip(clip.frames, clip.flows[:1], clip.masks, "bad")


def test_raft_flow_clip_shapes() -> None:
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    clip = raft_flow_clip(torch.rand(2, 3, 64, 64), raft_small(weights=None), name="r", iters=1)
    assert clip.flows.shape == (1, 2, 64, 64) and clip.masks.shape == (1, 1, 64, 64) and clip.name == "r"
