"""Probes that judge generated 32x32 mini-world images, validated on real renders before they are used.

One small CNN with five heads: subject present/absent, subject category (16 categories + "digit"), family
(4 families + "digit"), background pattern (5) and background colour (8). It is trained on fresh renders from
its own random stream (``[seed, 4301, i]``), with blur and noise augmentation so that soft generated images
are not out of its distribution. A head's verdict is used only when :func:`validate_probes` measured it at
>= 90% on real renders it never saw (``[seed, 4302, i]``); the 16-way category head falls back to the family
head otherwise (``MINIWORLD_NOTES.md``: 16-way shape probes are slow to train at 32x32).

:func:`inpaint_quality` measures an in-painting pipeline with these probes on held-out ID scenes
(``[seed, 4303, i]``): SynOOD's setting (full mask, "A photo only remain {context}.", strength 0.6) and box
in-painting of a prompted subject.

    python -m synood_kit.miniworld.probes train --out assets/miniworld/probes
    python -m synood_kit.miniworld.probes validate
    python -m synood_kit.miniworld.probes quality --pipeline assets/miniworld/inpaint --grid grid.png
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HEADS",
    "ProbeNet",
    "inpaint_quality",
    "judge",
    "load_probes",
    "render_probe_set",
    "save_probes",
    "train_probes",
    "usable_heads",
    "validate_probes",
]

_TRAIN_STREAM, _VAL_STREAM, _EVAL_STREAM = 4301, 4302, 4303
THRESHOLD = 0.9  # a head is used only at or above this accuracy on real renders


def _classes() -> dict[str, tuple[str, ...]]:
    from .shapes import CATEGORIES, FAMILIES
    from .world import BACKGROUND_COLORS, PATTERNS

    return {
        "present": ("absent", "present"),
        "category": tuple(c.name for c in CATEGORIES) + ("digit",),
        "family": tuple(FAMILIES) + ("digit",),
        "pattern": PATTERNS,
        "background": tuple(BACKGROUND_COLORS),
    }


HEADS = ("present", "category", "family", "pattern", "background")


class ProbeNet(torch.nn.Module):
    """A small CNN (about 0.3 M parameters) with one linear head per judged attribute."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(i, o):
            return torch.nn.Sequential(
                torch.nn.Conv2d(i, o, 3, padding=1),
                torch.nn.BatchNorm2d(o),
                torch.nn.ReLU(),
                torch.nn.Conv2d(o, o, 3, padding=1),
                torch.nn.BatchNorm2d(o),
                torch.nn.ReLU(),
            )

        w = width
        self.body = torch.nn.Sequential(
            block(3, w), torch.nn.MaxPool2d(2), block(w, 2 * w), torch.nn.MaxPool2d(2), block(2 * w, 4 * w)
        )
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(8 * w + 6, len(v)) for k, v in _classes().items()})
        self.width = width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return logits per head for ``x`` of shape ``(B, 3, 32, 32)`` in ``[0, 1]``."""
        h = self.body((x - 0.5) / 0.25)
        # Global colour statistics help the background head; max-pooling keeps small shapes.
        stats = torch.cat([x.mean((2, 3)), x.flatten(2).median(2).values], 1)
        f = torch.cat([h.mean((2, 3)), h.amax((2, 3)), stats], 1)
        return {k: head(f) for k, head in self.heads.items()}


def render_probe_set(
    n: int, seed: int = 0, stream: int = _VAL_STREAM, progress: bool = False
) -> tuple[torch.Tensor, dict]:
    """Render ``n`` labelled scenes (65% category subjects, 10% digits, 25% no subject).

    Returns:
        ``(images (n, 3, 32, 32) float in [0, 1], labels)`` with one ``(n,)`` int64 tensor per head;
        -100 where a head has no label (category and family of subject-free scenes).
    """
    from tqdm.auto import tqdm

    from .benchmark import pretraining_digit_rows
    from .shapes import category
    from .world import render, sample_scene

    cls = _classes()
    rows = pretraining_digit_rows()
    imgs = np.empty((n, 32, 32, 3), np.uint8)
    lab = {k: np.full(n, -100, np.int64) for k in HEADS}
    for i in tqdm(range(n), desc="probe renders", disable=not progress):
        rng = np.random.default_rng([seed, stream, i])
        kind = ("category", "digit", "none")[int(rng.choice(3, p=[0.65, 0.1, 0.25]))]
        scene = sample_scene(rng, subject=kind, digit_rows=rows)
        imgs[i] = render(scene)
        lab["present"][i] = int(scene.subject is not None)
        lab["pattern"][i] = cls["pattern"].index(scene.pattern)
        lab["background"][i] = cls["background"].index(scene.background)
        if scene.subject == "digit":
            lab["category"][i], lab["family"][i] = len(cls["category"]) - 1, len(cls["family"]) - 1
        elif scene.subject is not None:
            lab["category"][i] = cls["category"].index(scene.subject)
            lab["family"][i] = cls["family"].index(category(scene.subject).family)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0)
    return x, {k: torch.from_numpy(v) for k, v in lab.items()}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip, blur (like a soft generated image) and add noise, per image."""
    b = len(x)
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    k = torch.tensor([0.25, 0.5, 0.25])
    blurred = F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :]).expand(3, 1, 3, 3).contiguous(), groups=3
    )
    amount = torch.rand(b, 1, 1, 1, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) < 0.4)
    x = x + amount * (blurred - x)
    x = x + torch.randn(x.shape, generator=g) * 0.04 * torch.rand(b, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def train_probes(
    steps: int = 1500,
    batch_size: int = 128,
    pool_size: int = 24000,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> ProbeNet:
    """Train the probes on fresh renders (seeded; one to a few CPU minutes at the defaults).

    Args:
        steps: optimisation steps.
        batch_size: images per step.
        pool_size: scenes rendered once.
        lr: peak Adam learning rate (cosine decay).
        seed: seed of initialisation, renders and batches.
        device: torch device.
        progress: show progress bars.

    Returns:
        The trained :class:`ProbeNet` in eval mode.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x, lab = render_probe_set(pool_size, seed, _TRAIN_STREAM, progress)
    x, lab = x.to(device), {k: v.to(device) for k, v in lab.items()}
    net = ProbeNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="train probes", disable=not progress):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / steps))
        xb = _augment(x[idx.to(device)].cpu(), g).to(device)
        out = net(xb)
        loss = sum(F.cross_entropy(out[k], lab[k][idx.to(device)], ignore_index=-100) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def judge(net: ProbeNet, images: torch.Tensor, batch: int = 512) -> dict[str, np.ndarray]:
    """Return each head's predicted class index and the presence probability.

    Args:
        net: trained probes.
        images: ``(B, 3, 32, 32)`` float in ``[0, 1]``.

    Returns:
        ``{"present_prob": (B,) float, head: (B,) int class index}``.
    """
    if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be (B, 3, 32, 32) in [0, 1], got {tuple(images.shape)}")
    dev = next(net.parameters()).device
    outs = [net(images[i : i + batch].to(dev).float()) for i in range(0, len(images), batch)]
    res = {k: torch.cat([o[k] for o in outs]).argmax(1).cpu().numpy() for k in HEADS}
    res["present_prob"] = torch.cat([o["present"].softmax(1)[:, 1] for o in outs]).cpu().numpy()
    return res


def validate_probes(net: ProbeNet, n: int = 2000, seed: int = 0) -> dict:
    """Return each head's accuracy on ``n`` fresh real renders (a stream the probes never trained on).

    The ``usable`` entry lists the heads at or above :data:`THRESHOLD`; ``category`` accuracy is over scenes
    with a subject (16 categories + digit), ``family`` likewise (4 families + digit).
    """
    x, lab = render_probe_set(n, seed, _VAL_STREAM)
    pred = judge(net, x)
    acc = {}
    for k in HEADS:
        y = lab[k].numpy()
        keep = y != -100
        acc[k] = round(float((pred[k][keep] == y[keep]).mean()), 4)
    acc["n"] = n
    acc["usable"] = usable_heads(acc)
    return acc


def usable_heads(validation: dict, threshold: float = THRESHOLD) -> list[str]:
    """Return the heads whose validated accuracy is at least ``threshold``."""
    return [k for k in HEADS if validation.get(k, 0.0) >= threshold]


def save_probes(net: ProbeNet, folder: str | Path, validation: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``probes.safetensors`` (float32) and ``probes.json`` (classes, validation, provenance)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(folder / "probes.safetensors")
    )
    meta = {"width": net.width, "classes": _classes(), "validation": validation, **(extra or {})}
    (folder / "probes.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_probes(folder: str | Path | None = None) -> tuple[ProbeNet, dict]:
    """Load probes written by :func:`save_probes` (default ``<assets>/miniworld/probes``); return ``(net, meta)``.

    Raises:
        FileNotFoundError: if the folder has no ``probes.safetensors``.
    """
    from safetensors.torch import load_file

    from ..config import assets_dir

    folder = Path(folder) if folder else assets_dir() / "miniworld" / "probes"
    if not (folder / "probes.safetensors").is_file():
        raise FileNotFoundError(
            f"no probes.safetensors in {folder}; train them with `python -m synood_kit.miniworld.probes train`"
        )
    meta = json.loads((folder / "probes.json").read_text())
    net = ProbeNet(meta["width"])
    net.load_state_dict(load_file(str(folder / "probes.safetensors")))
    return net.eval(), meta


# --- judging an in-painting pipeline ------------------------------------------------------------------------


def _eval_scenes(n: int, seed: int):
    from .benchmark import BENCHMARK_SPEC
    from .shapes import category
    from .world import SUBJECT_COLORS, sample_scene

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, _EVAL_STREAM, i])
        scene = sample_scene(rng, categories=BENCHMARK_SPEC.id_classes)
        fam = category(scene.subject).family
        others = [c for c in BENCHMARK_SPEC.id_classes if category(c).family != fam]
        new = replace(
            scene, subject=str(rng.choice(others)), subject_color=str(rng.choice(list(SUBJECT_COLORS))), angle=0.0
        )
        out.append((scene, new))
    return out


def _tensor(arrs) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255.0)


def inpaint_quality(
    pipe,
    net: ProbeNet,
    validation: dict,
    n: int = 96,
    seed: int = 0,
    steps: int = 20,
    strength: float = 0.6,
    guidance_scale: float = 8.0,
    batch: int = 16,
    grid_rows: int = 6,
    progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """Measure an in-painting pipeline on ``n`` held-out scenes with ID subjects, judged by validated probes.

    (a) SynOOD's setting: full-image mask, ``"A photo only remain {context}."``, ``strength``, ``steps``,
    ``guidance_scale``. Reported: the share with the source subject removed (presence head) or changed
    (category head if usable, else family head), the share with the background pattern / colour kept.
    (b) Box in-painting at strength 1: the subject's box grown by 2 px, prompt = the scene's caption with a new
    subject from another family. Reported: mean absolute error outside the box of the raw pipeline output (the
    model's and VAE's own keeping) and after pasting the unmasked pixels back (0 by construction), the share of
    outputs whose judged subject is the prompted one (category and family level), and the share that redraws
    the original category.

    Args:
        pipe: a ``StableDiffusionInpaintPipeline`` at 32x32.
        net: probes; ``validation``: their :func:`validate_probes` result (decides which heads are used).
        n: scenes; seed: scene and noise seed; batch: images per pipeline call.
        grid_rows: rows of the sample grid per setting.

    Returns:
        ``(metrics, grid)``: the grid is uint8 ``(H, W, 3)``: per row source, mask, output, reference
        (subject-free ground truth for (a); the scene with the prompted subject for (b)), upscaled 4x.
    """
    from tqdm.auto import tqdm

    from .shapes import category
    from .world import render, subject_box

    usable = set(validation.get("usable", []))
    needed = {"present", "pattern"}
    if not needed <= usable:
        raise ValueError(
            f"probe heads {sorted(needed - usable)} are below {THRESHOLD:.0%} on real renders; retrain them"
        )
    cat_head = "category" if "category" in usable else "family"
    if cat_head not in usable:
        raise ValueError("neither the category nor the family head reached the validation threshold")
    cls = _classes()
    scenes = _eval_scenes(n, seed)
    src = _tensor([render(s) for s, _ in scenes])
    free = _tensor([render(s.without_subject()) for s, _ in scenes])
    new_ref = _tensor([render(ns) for _, ns in scenes])

    def label(name: str) -> int:
        return cls[cat_head].index(name if cat_head == "category" else category(name).family)

    from .train_inpaint import removal_prompt

    outs_a, outs_b, masks_b = [], [], []
    t0 = time.time()
    for lo in tqdm(range(0, n, batch), desc="inpaint quality", disable=not progress):
        chunk = scenes[lo : lo + batch]
        b = len(chunk)
        g = torch.Generator().manual_seed(seed * 100003 + lo)
        res = pipe(
            prompt=[removal_prompt(s.context()) for s, _ in chunk],
            image=src[lo : lo + b],
            mask_image=torch.ones(b, 1, 32, 32),
            height=32,
            width=32,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=g,
            output_type="pt",
        )
        outs_a.append(res.images.float().cpu())
        m = torch.zeros(b, 1, 32, 32)
        for j, (s, _) in enumerate(chunk):
            x0, y0, x1, y1 = subject_box(s, grow=2)
            m[j, 0, y0:y1, x0:x1] = 1.0
        res = pipe(
            prompt=[ns.caption() for _, ns in chunk],
            image=src[lo : lo + b],
            mask_image=m,
            height=32,
            width=32,
            strength=1.0,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=g,
            output_type="pt",
        )
        outs_b.append(res.images.float().cpu())
        masks_b.append(m)
    seconds = time.time() - t0
    out_a, out_b, mask_b = torch.cat(outs_a), torch.cat(outs_b), torch.cat(masks_b)
    pasted = mask_b * out_b + (1 - mask_b) * src
    ja, jb = judge(net, out_a), judge(net, pasted)
    src_cat = np.array([label(s.subject) for s, _ in scenes])
    new_cat = np.array([label(ns.subject) for _, ns in scenes])
    src_fam = np.array([cls["family"].index(category(s.subject).family) for s, _ in scenes])
    new_fam = np.array([cls["family"].index(category(ns.subject).family) for _, ns in scenes])
    pattern = np.array([cls["pattern"].index(s.pattern) for s, _ in scenes])
    bg = np.array([cls["background"].index(s.background) for s, _ in scenes])
    removed = ja["present"] == 0
    changed = (ja["present"] == 1) & (ja[cat_head] != src_cat)
    kept = ja["pattern"] == pattern
    outside = (1 - mask_b).expand_as(out_b)
    mae_raw = float(((out_b - src).abs() * outside).sum() / outside.sum())
    metrics = {
        "n": n,
        "steps": steps,
        "strength": strength,
        "guidance_scale": guidance_scale,
        "category_head": cat_head,
        "scheduler": type(pipe.scheduler).__name__,
        "synood": {
            "removed": round(float(removed.mean()), 4),
            "changed": round(float(changed.mean()), 4),
            "removed_or_changed": round(float((removed | changed).mean()), 4),
            "pattern_kept": round(float(kept.mean()), 4),
            "background_colour_kept": round(float((ja["background"] == bg).mean()), 4)
            if "background" in usable
            else None,
            "removed_or_changed_and_pattern_kept": round(float(((removed | changed) & kept).mean()), 4),
            "mae_to_subject_free_truth": round(float((out_a - free).abs().mean()), 4),
            "pattern_kept_by_pattern": {
                p: round(float(kept[pattern == i].mean()), 4)
                for i, p in enumerate(cls["pattern"])
                if (pattern == i).any()
            },
        },
        "box": {
            "mae_outside_box_raw": round(mae_raw, 4),
            "mae_outside_box_pasted": 0.0,
            "prompted_subject_present": round(float(((jb["present"] == 1) & (jb[cat_head] == new_cat)).mean()), 4),
            "prompted_family_present": round(float(((jb["present"] == 1) & (jb["family"] == new_fam)).mean()), 4)
            if "family" in usable
            else None,
            "original_redrawn": round(float(((jb["present"] == 1) & (jb[cat_head] == src_cat)).mean()), 4),
            "original_family_redrawn": round(float(((jb["present"] == 1) & (jb["family"] == src_fam)).mean()), 4)
            if "family" in usable
            else None,
            "subject_present": round(float((jb["present"] == 1).mean()), 4),
        },
        "seconds_per_image_per_setting": round(seconds / (2 * n), 3),
        "probe_validation": validation,
    }
    k = min(grid_rows, n)

    def row(cols):
        return torch.cat([c.expand(3, 32, 32) for c in cols], 2)

    rows = [row([src[i], torch.ones(1, 32, 32), out_a[i], free[i]]) for i in range(k)]
    rows += [row([src[i], mask_b[i], pasted[i], new_ref[i]]) for i in range(k)]
    grid = torch.cat(rows, 1)
    grid = F.interpolate(grid[None], scale_factor=4, mode="nearest")[0]
    return metrics, (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["train", "validate", "quality"])
    parser.add_argument("--probes", default=None, help="probe folder (default <assets>/miniworld/probes)")
    parser.add_argument("--out", default=None, help="train: folder to write (default: --probes)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pool-size", type=int, default=24000)
    parser.add_argument("--device", default="cpu", help="torch device of training / of the pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", default="assets/miniworld/inpaint", help="quality: the pipeline folder")
    parser.add_argument("--scheduler", default="shipped", choices=["shipped", "pndm", "ddim"], help="quality: sampler")
    parser.add_argument("--n", type=int, default=96, help="quality: scenes")
    parser.add_argument("--guidance", type=float, default=8.0)
    parser.add_argument("--grid", default=None, help="quality: PNG path of the sample grid")
    parser.add_argument("--json", default=None, help="quality: where to write the metrics")
    args = parser.parse_args(argv)
    from ..config import assets_dir

    folder = Path(args.probes) if args.probes else assets_dir() / "miniworld" / "probes"
    if args.command == "train":
        t0 = time.time()
        net = train_probes(steps=args.steps, pool_size=args.pool_size, seed=args.seed, device=args.device)
        net = net.cpu()
        val = validate_probes(net)
        save_probes(
            net,
            args.out or folder,
            val,
            {
                "trained_by": "python -m synood_kit.miniworld.probes train",
                "steps": args.steps,
                "pool_size": args.pool_size,
                "seed": args.seed,
                "device": args.device,
                "seconds": round(time.time() - t0, 1),
            },
        )
        print(json.dumps(val))
        return
    net, meta = load_probes(folder)
    if args.command == "validate":
        print(json.dumps(validate_probes(net)))
        return
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32)
    if args.scheduler != "shipped":  # the saved config carries both schedulers' keys (clip_sample, skip_prk_steps)
        pipe.scheduler = {"pndm": PNDMScheduler, "ddim": DDIMScheduler}[args.scheduler].from_config(
            pipe.scheduler.config
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device)
    val = validate_probes(net)
    metrics, grid = inpaint_quality(
        pipe, net.to(args.device), val, n=args.n, seed=args.seed, guidance_scale=args.guidance
    )
    if args.grid:
        from PIL import Image

        Image.fromarray(grid).save(args.grid)
    text = json.dumps(metrics, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
