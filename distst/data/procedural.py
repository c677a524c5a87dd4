"""Procedural "paintings" for the bundled style shards: brush strokes, mosaics, stripe fields.

They stand in for WikiArt where nothing may be downloaded: each is a pure function of its seed
(numpy's PCG64 and PIL drawing), so the sample shards rebuild byte for byte.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Size = tuple[int, int]


def palette(rng: np.random.Generator, colours: int = 5) -> np.ndarray:
    """``colours`` x 3 uint8: hues spread around a random base hue, as painters' palettes tend to be."""
    base = rng.random()
    hues = (base + rng.normal(0, 0.12, colours) + np.arange(colours) * rng.choice([0.08, 0.33, 0.5])) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, rng.uniform(0.35, 0.95), rng.uniform(0.3, 1.0)) for h in hues]
    return (np.array(rgb) * 255).round().astype(np.uint8)


def brush_strokes(seed: int, size: Size = (320, 320), strokes: int = 260) -> Image.Image:
    """Curved strokes that follow a smooth flow field over a toned ground, slightly softened."""
    rng = np.random.default_rng(seed)
    colours = palette(rng)
    width, height = size
    canvas = Image.new("RGB", size, tuple(int(c) for c in colours[0]))
    draw = ImageDraw.Draw(canvas)
    freq = rng.uniform(0.005, 0.03, 2)
    phase = rng.uniform(0, 2 * math.pi, 2)
    turn, swirl = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 3.0)
    for _ in range(strokes):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        colour = np.clip(colours[rng.integers(len(colours))].astype(int) + rng.integers(-20, 21, 3), 0, 255)
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 12))):
            angle = turn + swirl * (math.sin(x * freq[0] + phase[0]) + math.cos(y * freq[1] + phase[1]))
            x, y = x + 6 * math.cos(angle), y + 6 * math.sin(angle)
            points.append((x, y))
        draw.line(points, fill=tuple(int(c) for c in colour), width=int(rng.integers(3, 13)), joint="curve")
    return canvas.filter(ImageFilter.GaussianBlur(0.7))


def mosaic(seed: int, size: Size = (320, 320), tiles: int = 90) -> Image.Image:
    """Voronoi tiles in palette colours with dark grout where two tiles meet."""
    rng = np.random.default_rng(seed)
    colours = palette(rng).astype(np.int16)
    width, height = size
    centres = rng.uniform(0, 1, (tiles, 2)) * (width, height)
    ys, xs = np.mgrid[0:height, 0:width]
    dist = np.hypot(xs[..., None] - centres[:, 0], ys[..., None] - centres[:, 1])
    two = np.partition(dist, 1, axis=-1)[..., :2]  # the nearest and second-nearest centre distances
    nearest = dist.argmin(axis=-1)
    tile_colours = colours[rng.integers(len(colours), size=tiles)] + rng.integers(-25, 26, (tiles, 3))
    image = tile_colours[nearest]
    image[(two[..., 1] - two[..., 0]) < 2.5] = (30, 26, 22)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def stripes(seed: int, size: Size = (320, 320), bands: int = 5) -> Image.Image:
    """Warped parallel bands (op-art / textile-like), colours blended across band edges."""
    rng = np.random.default_rng(seed)
    colours = palette(rng, bands).astype(np.float64)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    theta = rng.uniform(0, math.pi)
    warp = rng.uniform(5, 25) * (np.sin(xs * rng.uniform(0.01, 0.04) + rng.uniform(0, 6))
                                 + np.cos(ys * rng.uniform(0.01, 0.04) + rng.uniform(0, 6)))
    phase = (xs * math.cos(theta) + ys * math.sin(theta) + warp) / rng.uniform(6, 18)
    position = (phase % bands)
    lower = np.floor(position).astype(int) % bands
    blend = np.clip((position - np.floor(position) - 0.8) / 0.2, 0, 1)[..., None]
    image = colours[lower] * (1 - blend) + colours[(lower + 1) % bands] * blend
    return Image.fromarray(image.round().astype(np.uint8))


GENERATORS = {"brush": brush_strokes, "mosaic": mosaic, "stripes": stripes}
