"""Optical flow: backward warping, validity masks, smooth random fields, flow files and RAFT from a local file.

Conventions (every video module follows them): a flow is ``(N, 2, H, W)`` (or ``(2, H, W)`` for one), channel 0
is dx (along the width), channel 1 is dy, in pixels. ``warp(image, flow)(x) = image(x + flow(x))``, bilinear,
pixel centres at integer coordinates (``grid_sample``'s ``align_corners=True``), zeros outside the image. A
clip's flow ``t`` goes from frame ``t`` to frame ``t + 1`` (MPI Sintel's forward flow), so
``warp(frames[t + 1], flows[t]) ~ frames[t]`` wherever the pixel is visible in both frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError
from ..weights import WeightsError, load_checked, read_state_dict

FLO_MAGIC = 202021.25  # Middlebury's "PIEH" tag as a little-endian float32
FLO_HEADER_BYTES = 12
MAX_FLOW_SIDE = 1 << 15  # a .flo header beyond this is corrupt, not a real frame
RAFT_MULTIPLE = 8  # RAFT's feature maps are 1/8 of the input: sides must be multiples of 8


class FlowError(DataError):
    """A flow file or flow set that cannot be used; the message names the file and what is wrong."""


# --- warping and masks --------------------------------------------------------------------------------

def _pixel_grid(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Sample coordinates x + dx, y + dy, (N, H, W) each, in float32 at least (half flows lose pixels)."""
    dtype = torch.promote_types(flow.dtype, torch.float32)
    height, width = flow.shape[-2:]
    ys = torch.arange(height, device=flow.device, dtype=dtype).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=dtype).view(1, 1, width)
    return xs + flow[:, 0].to(dtype), ys + flow[:, 1].to(dtype)


def _check_flow(flow: Tensor, images: Tensor | None = None) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"a flow batch is (N, 2, H, W); got {tuple(flow.shape)}")
    if images is not None and (images.dim() != 4 or images.shape[0] != flow.shape[0]
                               or images.shape[-2:] != flow.shape[-2:]):
        raise ValueError(f"images {tuple(images.shape)} do not match flow {tuple(flow.shape)}: "
                         "need (N, C, H, W) with (N, 2, H, W)")


def warp(images: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: ``out[n, :, y, x] = images[n, :, y + dy, x + dx]``, bilinear, zeros outside.

    The same sampling as ``grid_sample(..., align_corners=True, padding_mode="zeros")``, written out with
    gathers so that the weights are ``frac(x + dx)`` exactly: an integer flow shifts to the bit (grid_sample's
    normalised coordinates are off by ~1e-7 * width, which leaks a little of the neighbour pixel).
    Differentiable in both arguments.
    """
    _check_flow(flow, images)
    n, channels, height, width = images.shape
    px, py = _pixel_grid(flow)
    x0, y0 = px.floor(), py.floor()
    wx, wy = (px - x0).to(images.dtype), (py - y0).to(images.dtype)
    x0, y0 = x0.long(), y0.long()
    flat = images.reshape(n, channels, height * width)
    out = torch.zeros_like(images)
    for oy, weight_y in ((0, 1 - wy), (1, wy)):
        for ox, weight_x in ((0, 1 - wx), (1, wx)):
            xi, yi = x0 + ox, y0 + oy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).view(n, 1, -1)
            corner = flat.gather(2, index.expand(n, channels, -1)).view_as(images)
            out = out + corner * (weight_x * weight_y * inside).unsqueeze(1)
    return out


def in_bounds_mask(flow: Tensor) -> Tensor:
    """(N, 1, H, W), 1 where x + flow(x) lies inside the image (pixel centres 0..W-1, 0..H-1), else 0."""
    _check_flow(flow)
    height, width = flow.shape[-2:]
    px, py = _pixel_grid(flow)
    inside = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    return inside.unsqueeze(1).to(flow.dtype)


def forward_backward_mask(forward: Tensor, backward: Tensor, alpha1: float = 0.01, alpha2: float = 0.5) -> Tensor:
    """(N, 1, H, W) non-occlusion mask of frame t from the flows t -> t+1 (``forward``) and t+1 -> t.

    Sundaram et al.'s check as Lai et al. (ECCV 2018) use it: with ``wb = warp(backward, forward)`` (the backward
    flow where each pixel lands), a pixel is occluded where
    ``|f + wb|^2 > alpha1 * (|f|^2 + |wb|^2) + alpha2``; the result is also 0 where x + f(x) leaves the image.
    """
    _check_flow(forward, backward)
    warped = warp(backward, forward)
    mismatch = (forward + warped).square().sum(1, keepdim=True)
    scale = forward.square().sum(1, keepdim=True) + warped.square().sum(1, keepdim=True)
    consistent = mismatch <= alpha1 * scale + alpha2
    return consistent.to(forward.dtype) * in_bounds_mask(forward)


def smooth_random_flow(n: int, height: int, width: int, magnitude: float, generator: torch.Generator | None = None,
                       grid: int = 4, device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, 2, H, W): a ``grid`` x ``grid`` normal field upsampled bicubically, each sample scaled so that its
    largest |component| is ``magnitude`` pixels.

    Only ``n * 2 * grid**2`` numbers are drawn, from ``generator`` when given (on the generator's device,
    never the global RNG), so a seeded generator gives the same field on every device.
    """
    if n < 1 or height < 1 or width < 1 or grid < 1:
        raise ValueError(f"smooth_random_flow needs n, height, width, grid >= 1; got {n}, {height}, {width}, {grid}")
    draw_device = generator.device if generator is not None else device
    coarse = torch.randn(n, 2, grid, grid, generator=generator, device=draw_device, dtype=torch.float32)
    # Interpolated in float32 on the target device: bicubic has no half kernel on every backend.
    field = F.interpolate(coarse.to(device), size=(height, width), mode="bicubic", align_corners=True)
    peak = field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(field.dtype).tiny)
    return (field * (magnitude / peak)).to(dtype)


# --- flow files ---------------------------------------------------------------------------------------

def _read_flo(path: Path) -> Tensor:
    data = path.read_bytes()
    if len(data) < FLO_HEADER_BYTES:
        raise FlowError(f"{path}: truncated .flo file ({len(data)} bytes; the header alone is {FLO_HEADER_BYTES})")
    magic = float(np.frombuffer(data, "<f4", 1)[0])
    if magic != FLO_MAGIC:
        raise FlowError(f"{path}: not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data, "<i4", 2, offset=4))
    if not (0 < width <= MAX_FLOW_SIDE and 0 < height <= MAX_FLOW_SIDE):
        raise FlowError(f"{path}: corrupt .flo header (size {width}x{height})")
    expected = FLO_HEADER_BYTES + width * height * 2 * 4
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "too long"
        raise FlowError(f"{path}: {state} .flo file ({len(data)} bytes; {width}x{height} needs {expected})")
    values = np.frombuffer(data, "<f4", width * height * 2, offset=FLO_HEADER_BYTES)
    return torch.from_numpy(values.reshape(height, width, 2).copy()).permute(2, 0, 1).contiguous()


def _read_npy(path: Path) -> Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # numpy's errors for bad or cut-off files
        raise FlowError(f"{path}: not a readable .npy flow ({err})") from None
    if not isinstance(array, np.ndarray):  # np.load opens a zip (.npz) whatever its name
        raise FlowError(f"{path}: an .npz archive, not one .npy array; save the flow with np.save")
    if array.ndim == 3 and array.shape[-1] == 2:  # (H, W, 2) first: the usual layout (Sintel tools, OpenCV)
        array = array.transpose(2, 0, 1)
    elif array.ndim != 3 or array.shape[0] != 2:
        raise FlowError(f"{path}: flow array of shape {array.shape}; expected (H, W, 2) or (2, H, W)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise FlowError(f"{path}: flow array of dtype {array.dtype}; expected a real number type")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def read_flow(path: str | Path) -> Tensor:
    """(2, H, W) float32 from a Middlebury ``.flo`` or a ``.npy`` holding (H, W, 2) or (2, H, W).

    Raises ``FlowError`` for a missing file, a wrong magic number, a truncated file or a wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowError(f"flow file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".flo":
        return _read_flo(path)
    if suffix == ".npy":
        return _read_npy(path)
    raise FlowError(f"{path}: unsupported flow file type {suffix!r}; use .flo (Middlebury) or .npy")


def write_flo(path: str | Path, flow: Tensor) -> Path:
    """Write a (2, H, W) flow as a Middlebury ``.flo`` (float32, u and v interleaved); returns the path."""
    if flow.dim() != 3 or flow.shape[0] != 2:
        raise ValueError(f"write_flo takes one (2, H, W) flow; got {tuple(flow.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = flow.shape[-2:]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    values = flow.detach().cpu().permute(1, 2, 0).numpy().astype("<f4")
    path.write_bytes(header + values.tobytes())
    return path


# --- RAFT ---------------------------------------------------------------------------------------------

def _raft_variant(state: dict[str, Tensor], path: Path) -> str:
    """'large' or 'small' from the keys: only raft_large has a mask predictor, only raft_small bottlenecks."""
    if any(key.startswith("mask_predictor.") for key in state):
        return "large"
    if "feature_encoder.layer1.0.convnormrelu3.0.weight" in state:
        return "small"
    first = ", ".join(repr(k) for k in list(state)[:3]) or "none"
    raise WeightsError(f"{path} is not a torchvision RAFT state dict (raft_large or raft_small); first keys: {first}")


def load_raft(path: str | Path, variant: str | None = None) -> nn.Module:
    """torchvision's ``raft_large`` or ``raft_small`` (``variant``; inferred from the keys when None) with the
    state dict in the local file ``path`` loaded strictly (``weights_only=True``; nothing is downloaded).

    The model is returned in eval mode with gradients off. Torchvision's own checkpoints
    (``Raft_Large_Weights.C_T_SKHT_V2`` etc.) are in this layout; the original princeton-vl files are not.
    """
    from torchvision.models.optical_flow import raft_large, raft_small  # torchvision is slow to import

    path = Path(path)
    state = read_state_dict(path)
    if variant is None:
        variant = _raft_variant(state, path)
    builders = {"large": raft_large, "small": raft_small}
    if variant not in builders:
        raise WeightsError(f"RAFT variant {variant!r} is not one of {sorted(builders)}")
    model = builders[variant](weights=None)
    load_checked(model, state, f"{path} (RAFT {variant})")
    return model.eval().requires_grad_(False)


def _raft_min_side(raft: nn.Module) -> int:
    """RAFT's smallest input side: its correlation pyramid halves the 1/8 feature map ``num_levels - 1`` times
    and needs 2 cells at the coarsest level (torchvision raises otherwise): 128 px for both variants."""
    levels = getattr(getattr(raft, "corr_block", None), "num_levels", 4)
    return RAFT_MULTIPLE * 2 * 2 ** (levels - 1)


def _pad_for_raft(images: Tensor, min_side: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Replicate-padded, centred as RAFT's own padder, to multiples of 8 and at least ``min_side``."""
    height, width = images.shape[-2:]
    pad_h = max(min_side - height, -height % RAFT_MULTIPLE)
    pad_w = max(min_side - width, -width % RAFT_MULTIPLE)
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return F.pad(images, pads, mode="replicate"), pads


def raft_flows(raft: nn.Module, frames: Tensor, iters: int = 12, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Forward flows (T-1, 2, H, W), frame t -> t+1, and backward flows, t+1 -> t, of frames (T, 3, H, W) in [0, 1].

    Frames are scaled to RAFT's [-1, 1] and replicate-padded to multiples of 8, and to 128 px at least (what
    RAFT's correlation pyramid needs); the flows are cropped back.
    RAFT runs on its parameters' device, ``batch_size`` frame pairs at a time, in eval mode (restored after).
    The flows come back on the frames' device.
    """
    if frames.dim() != 4 or frames.shape[0] < 2 or frames.shape[1] != 3:
        raise ValueError(f"raft_flows needs frames (T >= 2, 3, H, W); got {tuple(frames.shape)}")
    device = next(raft.parameters()).device
    padded, (left, _, top, _) = _pad_for_raft(frames.to(device, torch.float32) * 2 - 1, _raft_min_side(raft))
    height, width = frames.shape[-2:]
    firsts, seconds = torch.cat([padded[:-1], padded[1:]]), torch.cat([padded[1:], padded[:-1]])
    was_training = raft.training
    raft.eval()  # batch norm in train mode would both change the flows and the running statistics
    try:
        with torch.no_grad():
            flows = torch.cat([raft(firsts[i:i + batch_size], seconds[i:i + batch_size], num_flow_updates=iters)[-1]
                               for i in range(0, len(firsts), batch_size)])
    finally:
        raft.train(was_training)
    flows = flows[..., top:top + height, left:left + width].to(frames.device)
    pairs = frames.shape[0] - 1
    return flows[:pairs], flows[pairs:]
