"""The mini-world's taxonomy and the geometry of its subjects.

Sixteen subject categories in four families of visually and semantically close siblings. Each category is
drawn as a mask from a centre, a radius and a rotation; rotation ranges are limited where a full turn would
make two siblings the same shape (a plus sign turned 45 degrees is a cross).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw

__all__ = ["CATEGORIES", "FAMILIES", "Category", "category", "draw_subject_mask"]


@dataclass(frozen=True)
class Category:
    """A subject category."""

    name: str  # the class name used in captions and prompts
    family: str  # its family of siblings
    max_rotation: float  # the largest rotation drawn, degrees (180 = any angle)


FAMILIES: dict[str, tuple[str, ...]] = {
    "polygon": ("triangle", "square", "pentagon", "hexagon"),
    "round": ("circle", "ellipse", "ring", "crescent"),
    "star": ("four-point star", "five-point star", "six-point star", "eight-point star"),
    "symbol": ("cross", "plus sign", "arrow", "heart"),
}

_ROTATION = {"cross": 12.0, "plus sign": 12.0, "heart": 20.0, "square": 180.0}

CATEGORIES: tuple[Category, ...] = tuple(
    Category(name, family, _ROTATION.get(name, 180.0)) for family, names in FAMILIES.items() for name in names
)
_BY_NAME = {c.name: c for c in CATEGORIES}


def category(name: str) -> Category:
    """Return the category called ``name``.

    Raises:
        ValueError: for a name outside the taxonomy.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown mini-world category {name!r}; known: {[c.name for c in CATEGORIES]}") from None


def _regular(n: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.sin(angle + 2 * math.pi * k / n), cy - r * math.cos(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int, cx: float, cy: float, r: float, angle: float, inner: float = 0.42):
    out = []
    for k in range(2 * points):
        rad = r if k % 2 == 0 else r * inner
        a = angle + math.pi * k / points
        out.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
    return out


def _rotate(points, cx: float, cy: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 72):
    pts = [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]
    return _rotate(pts, cx, cy, angle)


def _bar(cx: float, cy: float, half_len: float, half_w: float, angle: float):
    pts = [
        (cx - half_len, cy - half_w),
        (cx + half_len, cy - half_w),
        (cx + half_len, cy + half_w),
        (cx - half_len, cy + half_w),
    ]
    return _rotate(pts, cx, cy, angle)


def _heart(cx: float, cy: float, r: float, angle: float, n: int = 90):
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 17.0, cy - r * (y + 2.5) / 17.0))
    return _rotate(pts, cx, cy, angle)


def draw_subject_mask(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle_deg: float) -> None:
    """Draw category ``name`` into a mode-"L" mask: 255 where the subject is, 0 in its holes.

    Args:
        draw: an ``ImageDraw`` on the mask image.
        name: the category name.
        cx, cy: centre, pixels of the mask image.
        r: outer radius, pixels.
        angle_deg: rotation, degrees.
    """
    a = math.radians(angle_deg)
    fill, hole = 255, 0
    if name in ("triangle", "square", "pentagon", "hexagon"):
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
        radius = r * (1.12 if n == 3 else 1.0)  # a triangle looks smaller at the same circumradius
        draw.polygon(_regular(n, cx, cy + (0.18 * r if n == 3 else 0.0), radius, a), fill=fill)
    elif name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif name == "ellipse":
        draw.polygon(_ellipse(cx, cy, r, 0.52 * r, a), fill=fill)
    elif name == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        ri = 0.58 * r
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=hole)
    elif name == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        ox, oy = cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a)
        ri = 0.88 * r
        draw.ellipse((ox - ri, oy - ri, ox + ri, oy + ri), fill=hole)
    elif name.endswith("-point star"):
        points = {"four": 4, "five": 5, "six": 6, "eight": 8}[name.split("-")[0]]
        draw.polygon(_star(points, cx, cy, r * 1.1, a), fill=fill)
    elif name in ("cross", "plus sign"):
        base = math.pi / 4 if name == "cross" else 0.0
        for extra in (0.0, math.pi / 2):
            draw.polygon(_bar(cx, cy, r, 0.2 * r, base + extra + a), fill=fill)
    elif name == "arrow":
        shaft = _bar(cx - 0.25 * r, cy, 0.7 * r, 0.17 * r, 0.0)
        head = [(cx + r, cy), (cx + 0.15 * r, cy - 0.62 * r), (cx + 0.15 * r, cy + 0.62 * r)]
        draw.polygon(_rotate(shaft, cx, cy, a), fill=fill)
        draw.polygon(_rotate(head, cx, cy, a), fill=fill)
    elif name == "heart":
        draw.polygon(_heart(cx, cy, r * 1.05, a), fill=fill)
    else:
        raise ValueError(f"no geometry for category {name!r}")
