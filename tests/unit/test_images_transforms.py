"""distst's four image transforms equal torchvision's exactly (they replace it to keep ~1 s off every process's
start: importing torchvision pulls in torch._dynamo), and importing distst's builtins does not import it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid

from distst.images import center_crop, image_grid, pil_to_tensor, resize


@pytest.mark.parametrize(("height", "width"), [(37, 52), (52, 37), (40, 40)])
def test_to_tensor_resize_and_center_crop_equal_torchvision(height: int, width: int) -> None:
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    ours, theirs = pil_to_tensor(img), TF.to_tensor(img)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    for size in (16, 23, 64, min(height, width)):
        assert torch.equal(resize(ours, size), TF.resize(theirs, size, antialias=True)), size
    assert torch.equal(resize(ours[None], (20, 31)), TF.resize(theirs[None], [20, 31], antialias=True))
    for crop in ((height - 5, width - 2), (8, 8), (height, width)):
        assert torch.equal(center_crop(ours, crop), TF.center_crop(theirs, list(crop))), crop


@pytest.mark.parametrize("count", [1, 5, 6, 7])
def test_image_grid_equals_make_grid(count: int) -> None:
    images = torch.rand(count, 3, 9, 11, generator=torch.Generator().manual_seed(count))
    assert torch.equal(image_grid(images, nrow=3, padding=2, pad_value=1.0),
                       make_grid(images, nrow=3, padding=2, pad_value=1.0))


def test_distst_builtins_start_without_torchvision() -> None:
    code = ("import sys; from distst import registry; registry.load_builtins(); import distst.train.loop; "
            "import distst.video.io, distst.video.clips; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip().splitlines()[-1] == "False"
