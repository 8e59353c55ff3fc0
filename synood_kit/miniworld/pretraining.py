"""Pretraining data for the mini-world's foundation models: a pool of rendered scenes and caption sampling.

Pretraining covers every category, context, digit and texture of the world, as web-scale pretraining covers far
more than ImageNet. Its random streams are disjoint from the benchmark's (:mod:`.benchmark`).

Captions come with the set of attributes they assert (``"subj:pentagon"``, ``"bg:navy"``, ...). A caption is
*true* of an image when every attribute it asserts holds for the image; the multi-positive contrastive loss
of the CLIP recipe counts every true caption in a batch as a positive, which removes the shortcut that makes
every caption unique by colour and background (``MINIWORLD_NOTES.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .benchmark import pretraining_digit_rows
from .shapes import CATEGORIES
from .world import (
    BACKGROUND_COLORS,
    DIGIT_NAMES,
    PATTERNS,
    SUBJECT_COLORS,
    TEXTURE_KINDS,
    Scene,
    render,
    render_texture,
    sample_scene,
)

__all__ = [
    "HEAD_SIZES",
    "PretrainPool",
    "build_pool",
    "caption_truth",
    "image_attributes",
    "sample_caption",
    "subject_index",
]

PRETRAIN_STREAM = 9000  # first element of pretraining seeds; benchmark streams use 1-6
SUBJECT_CLASSES = tuple(c.name for c in CATEGORIES) + tuple(f"digit {d}" for d in DIGIT_NAMES) + ("none", "texture")
HEAD_SIZES = {
    "subject": len(SUBJECT_CLASSES),
    "color": len(SUBJECT_COLORS) + 1,
    "background": len(BACKGROUND_COLORS) + 1,
    "pattern": len(PATTERNS) + 1,
    "extras": 3,
}


@dataclass
class PretrainPool:
    """Rendered pretraining images with what they show."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    scenes: list  # Scene, or a texture metadata dict, per image

    def __len__(self) -> int:
        return len(self.images)

    def tensor(self, idx) -> torch.Tensor:
        """Return images ``idx`` as ``(B, 3, 32, 32)`` float in ``[0, 1]``."""
        return torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float().div_(255.0)


def build_pool(n: int, seed: int = 0, mix: dict | None = None, progress: bool = True) -> PretrainPool:
    """Render ``n`` pretraining images, deterministically from ``seed``.

    Args:
        n: number of images.
        seed: pool seed.
        mix: shares of ``{"category", "none", "digit", "texture"}`` (default 0.8/0.08/0.06/0.06).
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    mix = mix or {"category": 0.80, "none": 0.08, "digit": 0.06, "texture": 0.06}
    kinds = list(mix)
    probs = np.array([mix[k] for k in kinds], dtype=np.float64)
    probs /= probs.sum()
    images = np.empty((n, 32, 32, 3), np.uint8)
    scenes: list = []
    rows = pretraining_digit_rows()
    for i in tqdm(range(n), desc="pretraining pool", disable=not progress):
        rng = np.random.default_rng([PRETRAIN_STREAM, seed, i])
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        if kind == "texture":
            images[i], meta = render_texture(rng)
            scenes.append(meta)
        else:
            scene = sample_scene(rng, subject=kind, digit_rows=rows)
            images[i] = render(scene)
            scenes.append(scene)
    return PretrainPool(images, scenes)


def image_attributes(scene) -> frozenset[str]:
    """Return every attribute that holds for an image (a :class:`Scene` or texture metadata)."""
    if isinstance(scene, dict):
        return frozenset({f"tex:{scene['texture']}", "kind:texture"})
    attrs = {f"bg:{scene.background}", f"pat:{scene.pattern}", f"any:{scene.background}"}
    attrs |= {f"extra:{e.color} {e.kind}" for e in scene.extras} | {f"any:{e.color}" for e in scene.extras}
    attrs |= {f"xkind:{e.kind}" for e in scene.extras}
    if scene.subject is None:
        attrs.add("subj:none")
    else:
        attrs |= {f"subj:{scene.subject_name}", f"color:{scene.subject_color}", f"any:{scene.subject_color}"}
    return frozenset(attrs)


_OBJECT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "the nice {}",
    "a picture of a {}.",
    "an image of the {}.",
    "a drawing of a {}.",
    "a {} in the picture.",
    "this is a {}.",
    "a small {}.",
    "a big {}.",
)
_ADJ_TEMPLATES = ("This is a {} photo", "a {} picture.", "something {}.")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_caption(scene, rng: np.random.Generator) -> tuple[str, frozenset[str]]:
    """Return a random caption of an image and the attributes it asserts.

    A quarter are full captions; the rest name random subsets (the subject 70% of the time, its colour,
    the background, pattern and extras about half the time each), in varied templates that include
    NegLabel's prompts ("the nice {}", "This is a {} photo").
    """
    if isinstance(scene, dict):
        kind = scene["texture"]
        text = str(rng.choice(_OBJECT_TEMPLATES)).format(f"{kind} texture")
        return text, frozenset({f"tex:{kind}"})
    if rng.random() < 0.25:
        attrs = {f"bg:{scene.background}", f"subj:{scene.subject_name or 'none'}"}
        attrs |= {f"extra:{e.color} {e.kind}" for e in scene.extras}
        if scene.pattern != "plain":
            attrs.add(f"pat:{scene.pattern}")
        if scene.subject is not None:
            attrs.add(f"color:{scene.subject_color}")
        return scene.caption(), frozenset(attrs)
    attrs: set[str] = set()
    parts: list[str] = []
    if rng.random() < 0.1:  # an adjective caption: a colour somewhere in the picture
        colour = str(rng.choice(sorted(a[4:] for a in image_attributes(scene) if a.startswith("any:"))))
        return str(rng.choice(_ADJ_TEMPLATES)).format(colour), frozenset({f"any:{colour}"})
    if scene.subject is not None and rng.random() < 0.7:
        noun = scene.subject_name
        attrs.add(f"subj:{noun}")
        if rng.random() < 0.5:
            noun = f"{scene.subject_color} {noun}"
            attrs.add(f"color:{scene.subject_color}")
        head = str(rng.choice(_OBJECT_TEMPLATES)).format(noun).rstrip(".")
    elif scene.subject is None and rng.random() < 0.5:
        head = str(rng.choice(("an empty background", "nothing in front of a background", "a background only")))
        attrs.add("subj:none")
    else:
        head = ""
    if rng.random() < 0.5 or not head:
        attrs.add(f"bg:{scene.background}")
        parts.append(f"{_article(scene.background)} {scene.background} background")
    if scene.pattern != "plain" and (rng.random() < 0.5 or not (head or parts)):
        attrs.add(f"pat:{scene.pattern}")
        parts.append(scene.pattern)
    for e in scene.extras:
        if rng.random() < 0.4:
            attrs.add(f"extra:{e.color} {e.kind}")
            parts.append(f"{e.color} {e.kind}")
    if head and parts:
        text = f"{head} with {' and '.join(parts)}"
    elif head:
        text = head
    else:
        text = " with ".join(parts[:1]) + (" and " + " and ".join(parts[1:]) if len(parts) > 1 else "")
    return text, frozenset(attrs)


def caption_truth(image_attrs: list[frozenset[str]], caption_attrs: list[frozenset[str]]) -> torch.Tensor:
    """Return the ``(B_images, B_captions)`` bool matrix of "caption is true of image"."""
    return torch.tensor([[c <= a for c in caption_attrs] for a in image_attrs], dtype=torch.bool)


def subject_index(scene) -> int:
    """Return the subject head's class index of an image."""
    if isinstance(scene, dict):
        return SUBJECT_CLASSES.index("texture")
    return SUBJECT_CLASSES.index(scene.subject_name if scene.subject is not None else "none")


def head_targets(scenes: list) -> dict[str, torch.Tensor]:
    """Return supervised targets of the warm-up heads (-100 = ignore) for a batch of images."""
    colors, bgs = list(SUBJECT_COLORS), list(BACKGROUND_COLORS)
    out = {"subject": [], "color": [], "background": [], "pattern": [], "extras": []}
    for s in scenes:
        out["subject"].append(subject_index(s))
        if isinstance(s, dict):
            out["color"].append(len(colors))
            out["background"].append(len(bgs))
            out["pattern"].append(len(PATTERNS))
            out["extras"].append([0.0, 0.0, 0.0])
            continue
        out["color"].append(colors.index(s.subject_color) if s.subject_color else len(colors))
        out["background"].append(bgs.index(s.background))
        out["pattern"].append(PATTERNS.index(s.pattern))
        kinds = {e.kind for e in s.extras}
        out["extras"].append([float(k in kinds) for k in ("dots", "sparkles", "dashes")])
    return {k: torch.tensor(v) for k, v in out.items()}


def is_scene(x) -> bool:
    """Return whether a pool entry is a :class:`Scene` (not a texture)."""
    return isinstance(x, Scene)


__all__ += ["SUBJECT_CLASSES", "TEXTURE_KINDS", "head_targets", "is_scene"]
