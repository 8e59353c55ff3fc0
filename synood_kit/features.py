"""Feature extraction with on-disk caches, so scoring and fine-tuning never recompute an encoder pass.

* Text features are cached per ``(model fingerprint, exact list of prompts)``: the key covers the model,
  the corpus and the prompt template.
* Image features are cached per ``(encoder fingerprint, preprocessing, image-set fingerprint)`` in shards
  of ``shard_size`` images, each written atomically. A killed extraction resumes at the first missing shard;
  images that cannot be read are skipped and recorded with their reason, and the rest goes on.

Any encoder works that has ``fingerprint``, ``transform`` (a picklable ``(B,3,H,W) [0,1] -> inputs``
callable with a ``description``), ``encode_inputs(inputs) -> (B, D)`` and ``model`` (a module whose
parameters give the device inputs are moved to): :class:`~synood_kit.models.ClipModel` and the classifier
wrapper both do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import cache_dir
from .data import ImageSet, load_image
from .storage import atomic_path, atomic_write_json, remove_stale_temporaries, sha256_text

__all__ = ["FeatureSet", "extract_features", "image_features", "text_features"]


def text_features(
    clip,
    texts: list[str],
    cache_root: str | Path | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    use_cache: bool = True,
) -> torch.Tensor:
    """Return unnormalised text embeddings ``(N, D)`` float32 (CPU), cached on disk.

    Args:
        clip: a :class:`~synood_kit.models.ClipModel`.
        texts: formatted prompts, e.g. ``["the nice dog", ...]``.
        cache_root: cache folder; default :func:`synood_kit.config.cache_dir`.
        batch_size: prompts per forward pass.
        progress: show a progress bar while encoding.
        use_cache: read and write the cache.
    """
    from safetensors.torch import save_file

    key = sha256_text(clip.fingerprint + "\n" + "\n".join(texts), 24)
    path = Path(cache_root or cache_dir()) / "text_features" / f"{clip.fingerprint}-{key}.safetensors"
    if use_cache and path.is_file():
        data = _read_cache_file(
            path, "text feature cache", lambda d: "features" in d and len(d["features"]) == len(texts)
        )
        if data is not None:
            return data["features"]
    feats = clip.encode_text(list(texts), batch_size=batch_size, progress=progress).float().contiguous()
    if use_cache:
        with atomic_path(path) as tmp:
            save_file({"features": feats}, str(tmp), metadata={"model": clip.name, "n": str(len(texts))})
    return feats


@dataclass
class FeatureSet:
    """Encoded images: rows of ``features`` align with ``ids`` and ``labels``."""

    features: torch.Tensor  # (N, D) float32, unnormalised encoder outputs
    labels: np.ndarray  # (N,) int64, -1 for OOD
    ids: list[str]  # image ids, same order
    skipped: list[dict] = field(default_factory=list)  # {"id", "path", "reason"} of unreadable images
    cache_path: Path | None = None  # folder of the cache shards

    def __len__(self) -> int:
        return len(self.ids)


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, image_set: ImageSet, indices: list[int], transform):
        self.items = [image_set.items[i] for i in indices]
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        item = self.items[k]
        try:
            x = self.transform(load_image(item.path)[None])[0]
            return self.indices[k], x, ""
        except (OSError, ValueError) as e:
            return self.indices[k], None, f"{type(e).__name__}: {e}"


def _collate(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason in batch if x is None]
    idx = [i for i, _ in ok]
    xs = torch.stack([x for _, x in ok]) if ok else None
    return idx, xs, bad


def image_features(
    encoder,
    image_set: ImageSet,
    cache_root: str | Path | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    shard_size: int = 4096,
    progress: bool = True,
    use_cache: bool = True,
) -> FeatureSet:
    """Return the encoder's features of every readable image in ``image_set``, cached and resumable.

    Args:
        encoder: a :class:`~synood_kit.models.ClipModel` or any object with ``fingerprint``,
            ``transform`` and ``encode_inputs`` (see the module docstring).
        image_set: the images.
        cache_root: cache folder; default :func:`synood_kit.config.cache_dir`.
        batch_size: images per forward pass.
        num_workers: data-loader worker processes that decode and preprocess images.
        shard_size: images per cache shard (the unit of resumption).
        progress: show a progress bar.
        use_cache: read and write the cache; ``False`` recomputes everything in memory.

    Returns:
        A :class:`FeatureSet` in ``image_set`` order, without the skipped images.
    """
    extraction = _Extraction(encoder, image_set, cache_root, batch_size, num_workers, shard_size, use_cache)
    shards = list(extraction.shards(range(extraction.n_shards), progress))
    dims = {s["features"].shape[1] for s in shards if len(s["features"])}
    if not dims:
        raise ValueError(f"no image of {image_set.name!r} could be read; first problems: {shards[0]['skipped'][:3]}")
    index = torch.cat([s["index"] for s in shards]).numpy()
    features = torch.cat([s["features"] for s in shards if len(s["features"])])
    return FeatureSet(
        features=features,
        labels=image_set.labels[index],
        ids=[image_set.items[i].id for i in index],
        skipped=[rec for s in shards for rec in s["skipped"]],
        cache_path=extraction.folder if use_cache else None,
    )


def extract_features(
    encoder,
    image_set: ImageSet,
    rank: int = 0,
    world_size: int = 1,
    cache_root: str | Path | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    shard_size: int = 4096,
    progress: bool = True,
) -> dict:
    """Compute this process's share of an image set's feature cache: shards ``s`` with ``s % world_size == rank``.

    Run one per process (``accelerate launch`` / ``torchrun`` set the rank): the shards are disjoint, every
    process writes into the same cache, a shard already there is kept, and a killed process loses at most the
    shard it was writing. Afterwards :func:`image_features` reads the whole set from the cache.

    Returns:
        ``{"shards": shards of this process, "images": their images, "skipped": unreadable images among them}``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    extraction = _Extraction(encoder, image_set, cache_root, batch_size, num_workers, shard_size, True)
    mine = [s for s in range(extraction.n_shards) if s % world_size == rank]
    shards = list(extraction.shards(mine, progress))
    return {
        "shards": len(mine),
        "images": sum(len(s["index"]) + len(s["skipped"]) for s in shards),
        "skipped": sum(len(s["skipped"]) for s in shards),
    }


class _Extraction:
    """One image set's feature cache: its folder, and its shards read from there or computed and written."""

    def __init__(self, encoder, image_set, cache_root, batch_size, num_workers, shard_size, use_cache):
        if shard_size < 1 or batch_size < 1:
            raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
        self.encoder, self.image_set, self.use_cache = encoder, image_set, use_cache
        self.batch_size, self.num_workers, self.shard_size = batch_size, num_workers, shard_size
        transform = encoder.transform
        key = sha256_text(f"{transform.description}\n{image_set.fingerprint()}\n{shard_size}")
        self.folder = (
            Path(cache_root or cache_dir()) / "image_features" / encoder.fingerprint / f"{image_set.name}-{key}"
        )
        self.n_shards = (len(image_set) + shard_size - 1) // shard_size
        if use_cache:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.folder)
            atomic_write_json(
                self.folder / "info.json",
                {
                    "encoder": encoder.fingerprint,
                    "set": image_set.name,
                    "n": len(image_set),
                    "transform": transform.description,
                },
            )

    def shards(self, numbers, progress: bool):
        """Yield shard ``s`` for each of ``numbers``: read from the cache, or computed (and written)."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        image_set, size = self.image_set, self.shard_size
        numbers = list(numbers)
        total = sum(min(len(image_set), (s + 1) * size) - s * size for s in numbers)
        bar = tqdm(total=total, desc=f"features {image_set.name}", unit="img", disable=not progress)
        device = next(self.encoder.model.parameters()).device
        for s in numbers:
            lo, hi = s * size, min(len(image_set), (s + 1) * size)
            path = self.folder / f"shard-{s:05d}.safetensors"
            if self.use_cache and path.is_file():
                shard = _read_shard(path, lo, hi)
                if shard is not None:
                    bar.update(hi - lo)
                    yield shard
                    continue
            loader = torch.utils.data.DataLoader(
                _ImageDataset(image_set, list(range(lo, hi)), self.encoder.transform),
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=_collate,
            )
            index, feats, skipped = [], [], []
            with torch.no_grad():
                for idx, xs, bad in loader:
                    if xs is not None:
                        feats.append(self.encoder.encode_inputs(xs.to(device)).float().cpu())
                        index.extend(idx)
                    for i, reason in bad:
                        item = image_set.items[i]
                        skipped.append({"id": item.id, "path": str(item.path), "reason": reason})
                    bar.update(len(idx) + len(bad))
            dim = feats[0].shape[1] if feats else 0
            shard = {
                "index": torch.tensor(index, dtype=torch.int64),
                "features": torch.cat(feats) if feats else torch.zeros((0, dim)),
                "skipped": skipped,
            }
            if self.use_cache:
                with atomic_path(path) as tmp:
                    save_file(
                        {"index": shard["index"], "features": shard["features"].contiguous()},
                        str(tmp),
                        metadata={"skipped": json.dumps(skipped)},
                    )
            yield shard
        bar.close()


def _read_cache_file(path: Path, what: str, valid) -> dict | None:
    """Return a cache file's tensors if ``valid(tensors)``; otherwise warn and return ``None``, so that a cache
    damaged by a fault outside the kit is recomputed, never fatal."""
    import warnings

    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
        if valid(data):
            return data
        reason = "inconsistent shapes or indices"
    except Exception as e:  # safetensors raises its own error type on a damaged file
        reason = f"{type(e).__name__}: {e}"
    warnings.warn(f"{what} {path} is unreadable ({reason}); recomputing it", stacklevel=3)
    return None


def _read_shard(path: Path, lo: int, hi: int) -> dict | None:
    """Return a cached shard of images ``[lo, hi)``, or ``None`` (with a warning) if it is unreadable or
    inconsistent."""

    def valid(d):
        index, feats = d.get("index"), d.get("features")
        return (
            index is not None
            and feats is not None
            and index.ndim == 1
            and feats.ndim == 2
            and len(index) == len(feats)
            and bool(((index >= lo) & (index < hi)).all())
        )

    data = _read_cache_file(path, "feature cache shard", valid)
    return (
        None if data is None else {"index": data["index"], "features": data["features"], "skipped": _skipped_of(path)}
    )


def _skipped_of(path: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("skipped", "[]"))
