"""Flow: exact integer warps, masks by hand, smooth random fields, .flo/.npy files and RAFT from a local file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_large, raft_small

from distst.video.flow import (
    FLO_MAGIC,
    FlowError,
    forward_backward_mask,
    in_bounds_mask,
    load_raft,
    raft_flows,
    read_flow,
    smooth_random_flow,
    warp,
    write_flo,
)
from distst.weights import WeightsError


def constant_flow(dx: float, dy: float, height: int, width: int, n: int = 1) -> torch.Tensor:
    return torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(n, 2, height, width).clone()


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """images(x + dx, y + dy), zeros outside: the closed form of an integer backward warp."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        images[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


# --- warp and masks -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("dx", "dy"), [(0, 0), (3, 0), (0, -2), (-5, 4), (7, 9)])
def test_integer_flow_shifts_exactly(dx: int, dy: int) -> None:
    images = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(0))
    warped = warp(images, constant_flow(dx, dy, 23, 31, n=2))
    assert torch.equal(warped, shifted(images, dx, dy))
    if dx >= 0 and dy >= 0:  # the same as a roll where nothing wrapped around
        rolled = torch.roll(images, shifts=(-dy, -dx), dims=(-2, -1))
        assert torch.equal(warped[..., :23 - dy, :31 - dx], rolled[..., :23 - dy, :31 - dx])


def test_fractional_flow_is_bilinear_as_grid_sample_with_aligned_corners() -> None:
    gen = torch.Generator().manual_seed(1)
    images, flow = torch.rand(2, 3, 16, 20, generator=gen), torch.randn(2, 2, 16, 20, generator=gen) * 3
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) / 19 * 2 - 1, (ys + flow[:, 1]) / 15 * 2 - 1], dim=-1)
    reference = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(warp(images, flow), reference, atol=1e-5)
    half = warp(images, constant_flow(0.5, 0, 16, 20, n=2))  # half a pixel: the mean of the two neighbours
    assert torch.allclose(half[..., :-1], (images[..., :-1] + images[..., 1:]) / 2, atol=1e-7)
    assert torch.allclose(half[..., -1], images[..., -1] / 2, atol=1e-7)  # the other neighbour is outside: 0


def test_warp_is_differentiable_and_keeps_dtype() -> None:
    images = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    flow = torch.full((1, 2, 8, 8), 0.3, dtype=torch.float64, requires_grad=True)
    warp(images, flow).sum().backward()
    assert images.grad is not None and flow.grad is not None and warp(images, flow).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_in_bounds_mask_by_hand() -> None:
    mask = in_bounds_mask(constant_flow(2, -1, 3, 5))
    expected = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    assert mask.shape == (1, 1, 3, 5) and torch.equal(mask[0, 0], expected)
    # x + 0.5 stays inside up to x = W - 1.5; the last column samples beyond the last pixel centre
    assert torch.equal(in_bounds_mask(constant_flow(0.5, 0, 2, 4))[0, 0], torch.tensor([[1.0, 1, 1, 0]] * 2))


def test_forward_backward_mask() -> None:
    forward, backward = constant_flow(3, 1, 20, 24), constant_flow(-3, -1, 20, 24)
    assert torch.equal(forward_backward_mask(forward, backward), in_bounds_mask(forward))  # consistent: all valid
    backward[..., 5:10, 8:14] = torch.tensor([4.0, 2.0]).view(2, 1, 1)  # an inconsistent region of frame t+1
    expected = in_bounds_mask(forward).clone()
    expected[..., 5 - 1:10 - 1, 8 - 3:14 - 3] = 0  # the pixels of frame t that land in it
    assert torch.equal(forward_backward_mask(forward, backward), expected)
    # a small mismatch is tolerated: |f + wb|^2 = 0.25 <= 0.01 * (10 + 7.25) + 0.5
    assert torch.equal(forward_backward_mask(forward, constant_flow(-2.5, -1, 20, 24)), in_bounds_mask(forward))


# --- smooth random flow -------------------------------------------------------------------------------

def test_smooth_random_flow_is_seeded_scaled_and_smooth() -> None:
    state = torch.get_rng_state()
    flow = smooth_random_flow(3, 40, 50, 2.5, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert flow.shape == (3, 2, 40, 50) and flow.dtype == torch.float32
    assert torch.allclose(flow.abs().amax(dim=(1, 2, 3)), torch.full((3,), 2.5))
    assert torch.equal(flow, smooth_random_flow(3, 40, 50, 2.5, torch.Generator().manual_seed(7)))
    assert not torch.equal(flow, smooth_random_flow(3, 40, 50, 2.5, torch.Generator().manual_seed(8)))
    assert flow.diff(dim=-1).abs().max() < 2.5 * 0.25  # smooth: a 4 x 4 field over 50 px changes slowly
    half = smooth_random_flow(2, 8, 8, 1.0, torch.Generator().manual_seed(7), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.equal(smooth_random_flow(1, 4, 4, 0.0, torch.Generator().manual_seed(7)), torch.zeros(1, 2, 4, 4))


# --- flow files ---------------------------------------------------------------------------------------

def test_flo_round_trip_and_npy_layouts(tmp_path: Path) -> None:
    flow = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(2))
    path = write_flo(tmp_path / "a.flo", flow)
    data = path.read_bytes()
    assert np.frombuffer(data[:4], "<f4")[0] == FLO_MAGIC and list(np.frombuffer(data[4:12], "<i4")) == [7, 5]
    assert len(data) == 12 + 5 * 7 * 2 * 4 and torch.equal(read_flow(path), flow)
    np.save(tmp_path / "hw2.npy", flow.permute(1, 2, 0).numpy())
    np.save(tmp_path / "chw.npy", flow.numpy().astype(np.float64))
    assert torch.equal(read_flow(tmp_path / "hw2.npy"), flow)
    assert torch.equal(read_flow(tmp_path / "chw.npy"), flow) and read_flow(tmp_path / "chw.npy").dtype == torch.float32


def test_bad_flow_files_are_named(tmp_path: Path) -> None:
    good = write_flo(tmp_path / "good.flo", torch.zeros(2, 4, 6)).read_bytes()
    files = {
        "wrong_magic.flo": (b"PIEX" + good[4:], "not a Middlebury .flo file"),
        "header_only.flo": (good[:8], r"truncated \.flo file \(8 bytes"),
        "cut.flo": (good[:-4], r"truncated \.flo file .*6x4 needs 204"),
        "long.flo": (good + b"\0" * 8, r"too long \.flo file"),
        "bad_size.flo": (good[:4] + np.array([-1, 4], "<i4").tobytes() + good[12:], r"corrupt \.flo header"),
        "flow.png": (b"png", "unsupported flow file type '.png'"),
    }
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FlowError, match=rf"{name}: {message}"):
            read_flow(tmp_path / name)
    np.save(tmp_path / "shape.npy", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(FlowError, match=r"shape.npy: flow array of shape \(3, 4, 5\)"):
        read_flow(tmp_path / "shape.npy")
    np.save(tmp_path / "object.npy", np.array([{"u": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FlowError, match="object.npy: not a readable .npy flow"):
        read_flow(tmp_path / "object.npy")
    with pytest.raises(FlowError, match="missing.flo does not exist"):
        read_flow(tmp_path / "missing.flo")


# --- RAFT ---------------------------------------------------------------------------------------------

def test_load_raft_infers_the_variant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    for builder, variant in ((raft_small, "small"), (raft_large, "large")):
        reference = builder(weights=None)
        torch.save(reference.state_dict(), tmp_path / f"{variant}.pth")
        model = load_raft(tmp_path / f"{variant}.pth")
        assert not model.training and len(model.state_dict()) == len(reference.state_dict())
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())
    with pytest.raises(WeightsError, match=r"small.pth \(RAFT large\) does not fit RAFT: missing key"):
        load_raft(tmp_path / "small.pth", variant="large")
    with pytest.raises(WeightsError, match="variant 'tiny' is not one of"):
        load_raft(tmp_path / "small.pth", variant="tiny")


def test_load_raft_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other.pth is not a torchvision RAFT state dict .*'conv.weight'"):
        load_raft(tmp_path / "other.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth does not hold a state dict"):
        load_raft(tmp_path / "list.pth")
    (tmp_path / "object.pth").write_bytes(pickle.dumps(Path("x"), protocol=2))
    with pytest.raises(WeightsError, match="object.pth is not a loadable weights file"):
        load_raft(tmp_path / "object.pth")
    with pytest.raises(WeightsError, match="missing.pth does not exist"):
        load_raft(tmp_path / "missing.pth")


@pytest.mark.parametrize("size", [(64, 64), (60, 70)])
def test_raft_flows_shapes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    raft = raft_small(weights=None).train()
    frames = torch.rand(3, 3, *size)
    forward, backward = raft_flows(raft, frames, iters=1)
    assert forward.shape == backward.shape == (2, 2, *size) and torch.isfinite(forward).all()
    assert raft.training  # its mode is restored
