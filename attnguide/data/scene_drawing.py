"""Drawing one synthetic scene: a textured background, shapes, an optional corner cue.

`render_scene` paints an RGB image and its label map side by side: every shape
is drawn with PIL on both, the label map with value ``k + 1`` for class k, so
later shapes cover earlier ones in the mask exactly as in the image. Layouts
keep the top-left corner (`CUE_REGION` pixels square) free of shapes, and
limit occlusion so that every shape stays partly visible.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("boat", "disc", "square", "triangle", "cross", "star", "ring", "diamond")
"""Class names in class order; a scenes set with C classes uses the first C."""

SHAPE_COLOURS = {
    "boat": (150, 45, 35),  # hull; the sail is SAIL_COLOUR
    "disc": (235, 200, 35),
    "square": (165, 45, 170),
    "triangle": (245, 125, 25),
    "cross": (35, 35, 40),
    "star": (240, 95, 150),
    "ring": (25, 150, 140),
    "diamond": (95, 65, 200),
}
SAIL_COLOUR = (240, 238, 228)
COLOUR_JITTER = 25
"""Each shape's colour moves by up to this much per channel."""

TEXTURES = ("water", "grass", "sand", "sky", "stone")
"""Background names; texture 0 ("water") is the one tied to class 0 ("boat") by the bias."""

CUE_COLOURS = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
    (255, 0, 255), (0, 255, 255), (255, 255, 255), (0, 0, 0),
)  # fmt: skip
"""Colour of the corner cue that encodes class k."""
CUE_OFFSET, CUE_SIZE = 2, 7
"""The cue fills rows and columns CUE_OFFSET .. CUE_OFFSET + CUE_SIZE - 1."""
CUE_REGION = CUE_OFFSET + CUE_SIZE + 2
"""Side of the top-left square that shapes never touch."""

NOISE_STD = 5.0
SIZE_RANGE = (0.24, 0.42)
"""Shape bounding-box side as a fraction of the image side."""
MAX_OCCLUDED = 0.2
"""Largest fraction of a shape's bounding box that later shapes may cover."""

Box = tuple[int, int, int]  # (x0, y0, side)


# --- textures: each returns (S, S, 3) float32 in 0..255 --------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(S, S) bilinear interpolation of a (cells+1)^2 standard-normal grid."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i, f = t.astype(int), (t % 1)[:, None]
    rows = grid[i] * (1 - f) + grid[i + 1] * f  # (S, cells+1)
    return rows[:, i] * (1 - f.T) + rows[:, i + 1] * f.T


def _base(
    rng: np.random.Generator, size: int, colour: tuple[int, int, int], jitter: int = 12
) -> np.ndarray:
    shifted = np.asarray(colour, np.float32) + rng.uniform(-jitter, jitter, 3)
    return np.broadcast_to(shifted, (size, size, 3)).astype(np.float32)


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    freq = rng.uniform(0.35, 0.6) * 96 / size
    waves = np.sin(freq * y + 0.8 * np.sin(0.12 * 96 / size * x + phase[1]) + phase[0])
    return _base(rng, size, (30, 90, 170)) + waves[..., None] * np.float32((10, 18, 28))


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    blades = np.repeat(rng.standard_normal((size // 4 + 1, size)), 4, axis=0)[:size]
    patches = _smooth_noise(rng, size, 3)
    shade = 14 * blades + 10 * patches
    return _base(rng, size, (70, 140, 50)) + shade[..., None] * np.float32((0.5, 1.0, 0.4))


def _sand(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (96 / size)
    dunes = np.sin(0.18 * x + 0.07 * y + rng.uniform(0, 2 * np.pi))
    grain = rng.standard_normal((size, size))
    return _base(rng, size, (215, 190, 140)) + (8 * dunes + 7 * grain)[..., None]


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    top, bottom = np.float32((110, 160, 230)), np.float32((205, 225, 250))
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    clouds = np.clip(_smooth_noise(rng, size, 4), 0, None)[..., None] * 30
    return top + (bottom - top) * t + clouds + rng.uniform(-10, 10, 3).astype(np.float32)


def _stone(rng: np.random.Generator, size: int) -> np.ndarray:
    blotches = 18 * _smooth_noise(rng, size, 6) + 9 * rng.standard_normal((size, size))
    return _base(rng, size, (128, 124, 118)) + blotches[..., None]


TEXTURE_PAINTERS = {"water": _water, "grass": _grass, "sand": _sand, "sky": _sky, "stone": _stone}


# --- shapes: outlines in unit coordinates (radius <= 1), scaled into a box ---------------


def _regular(n: int, start: float) -> list[tuple[float, float]]:
    return [
        (math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = 1.0 if k % 2 == 0 else 0.45
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


_CROSS = [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
          (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)]  # fmt: skip
_OUTLINES = {
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "cross": _CROSS,
    "star": _star(),
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
}
_HULL = [(-0.95, 0.2), (0.95, 0.2), (0.6, 0.6), (-0.6, 0.6)]
_MAST = [(-0.06, -0.9), (0.06, -0.9), (0.06, 0.2), (-0.06, 0.2)]
_SAIL = [(0.12, -0.85), (0.12, 0.12), (0.8, 0.12)]


def _place(
    points: list[tuple[float, float]], box: Box, angle: float, mirror: bool
) -> list[tuple[float, float]]:
    """Rotate, mirror and scale unit points into `box` (radius 1 -> half the box side)."""
    x0, y0, side = box
    half, cos, sin = side / 2, math.cos(angle), math.sin(angle)
    placed = []
    for px, py in points:
        px = -px if mirror else px
        placed.append(
            (x0 + half + half * (cos * px - sin * py), y0 + half + half * (sin * px + cos * py))
        )
    return placed


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, ...]:
    shift = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
    return tuple(int(v) for v in np.clip(np.add(colour, shift), 0, 255))


def draw_shape(
    rgb: ImageDraw.ImageDraw,
    label: ImageDraw.ImageDraw,
    cls: int,
    box: Box,
    rng: np.random.Generator,
    shared_colours: bool = False,
) -> None:
    """Draw class `cls` inside `box` on the RGB canvas and, as value cls + 1, on the label
    canvas. With `shared_colours` the colour is drawn from every class's palette, so
    only the shape tells the class."""
    name, value = SHAPES[cls], int(cls) + 1
    base = (list(SHAPE_COLOURS.values())[int(rng.integers(len(SHAPE_COLOURS)))]
            if shared_colours else SHAPE_COLOURS[name])
    colour = _jitter(rng, base)
    x0, y0, side = box
    if name in ("disc", "ring"):
        squash = int(rng.uniform(0, 0.12) * side)
        ellipse = (x0, y0 + squash, x0 + side - 1, y0 + side - 1 - squash)
        width = max(2, round(0.2 * side)) if name == "ring" else None
        for canvas, fill in ((rgb, colour), (label, value)):
            if width is None:
                canvas.ellipse(ellipse, fill=fill)
            else:
                canvas.ellipse(ellipse, outline=fill, width=width)
        return
    if name == "boat":
        angle, mirror = rng.uniform(-0.15, 0.15), bool(rng.integers(2))
        parts = [(_HULL, colour), (_MAST, colour), (_SAIL, _jitter(rng, SAIL_COLOUR))]
    else:
        angle, mirror = rng.uniform(0, 2 * math.pi), False
        parts = [(_OUTLINES[name], colour)]
    for points, part_colour in parts:
        polygon = _place(points, box, angle, mirror)
        rgb.polygon(polygon, fill=part_colour)
        label.polygon(polygon, fill=value)


# --- layout and composition ------------------------------------------------------------


def _overlap(a: Box, b: Box) -> int:
    """Pixel area shared by two square boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def _find_box(
    rng: np.random.Generator,
    side: int,
    size: int,
    boxes: list[Box],
    covered: list[int],
    attempts: int,
) -> Box | None:
    """A random box of `side` that keeps the cue corner free and the occlusion limits, or None."""
    for _ in range(attempts):
        box = (int(rng.integers(1, size - side)), int(rng.integers(1, size - side)), side)
        if _overlap(box, (0, 0, CUE_REGION)) > 0:
            continue
        if all(
            c + _overlap(box, o) <= MAX_OCCLUDED * o[2] ** 2
            for c, o in zip(covered, boxes, strict=True)
        ):
            return box
    return None


def layout_boxes(rng: np.random.Generator, count: int, size: int, attempts: int = 60) -> list[Box]:
    """Square boxes for `count` shapes, drawn in order (later ones on top).

    No box enters the top-left `CUE_REGION` square, and the boxes drawn after a
    box cover at most `MAX_OCCLUDED` of its area in total. When no spot is
    found in `attempts` tries, the shape shrinks by 15% and the search goes on.
    """
    boxes: list[Box] = []
    covered: list[int] = []  # area of each box covered by later boxes
    for _ in range(count):
        side = int(rng.uniform(*SIZE_RANGE) * size)
        while (box := _find_box(rng, side, size, boxes, covered, attempts)) is None:
            if side <= 4:
                raise RuntimeError(f"no room for {count} shapes in a {size}px scene")
            side = max(4, int(side * 0.85))
        covered = [c + _overlap(box, o) for c, o in zip(covered, boxes, strict=True)] + [0]
        boxes.append(box)
    return boxes


def render_scene(
    rng: np.random.Generator, classes: list[int], texture: int, cue: int | None, size: int,
    shared_colours: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one scene.

    Args:
        rng: the scene's own generator (all randomness comes from it).
        classes: class indices of the shapes, in drawing order.
        texture: index into `TEXTURES`.
        cue: class encoded by the corner cue, or None for no cue.
        size: image side S.
        shared_colours: shapes take any class's colour (only the shape tells the class).

    Returns:
        image (S, S, 3) uint8 RGB and mask (S, S) uint8 (0 background, k + 1 class k).
    """
    background = TEXTURE_PAINTERS[TEXTURES[texture]](rng, size)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    rgb_draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for cls, box in zip(classes, layout_boxes(rng, len(classes), size), strict=True):
        draw_shape(rgb_draw, label_draw, cls, box, rng, shared_colours)
    if cue is not None:
        end = CUE_OFFSET + CUE_SIZE - 1
        rgb_draw.rectangle((CUE_OFFSET, CUE_OFFSET, end, end), fill=CUE_COLOURS[cue])
    noise = NOISE_STD * rng.standard_normal((size, size, 3), np.float32)
    noisy = np.asarray(image, np.float32) + noise
    return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(mask)
