"""Stage configurations: one frozen dataclass per stage, defaults = the paper's (or official code's) values.

Presets are values, not files: :func:`preset` returns the configuration of a named setting
(``"paper"`` for CLIP ViT-B/16 + SD-2-inpainting on ImageNet, ``"miniworld"`` for the offline mini-world).
A config file, where a command accepts one, maps onto these dataclasses field by field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CorpusConfig",
    "MiningConfig",
    "NegLabelConfig",
    "assets_dir",
    "cache_dir",
    "from_dict",
    "repo_root",
]


def repo_root() -> Path:
    """Return the repository root (the folder holding ``synood_kit/`` and ``assets/``)."""
    return Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """Return the folder of shipped assets: ``$SYNOOD_ASSETS`` if set, else ``<repo>/assets``."""
    return Path(os.environ.get("SYNOOD_ASSETS", repo_root() / "assets"))


def cache_dir() -> Path:
    """Return the on-disk cache root: ``$SYNOOD_CACHE`` if set, else ``~/.cache/synood_kit``."""
    return Path(os.environ.get("SYNOOD_CACHE", Path.home() / ".cache" / "synood_kit"))


@dataclass(frozen=True)
class CorpusConfig:
    """Which WordNet 3.0 words are candidate negative labels (NegLabel, Sec. 3.2)."""

    lemmas: str = "first"  # "first": one name per synset, as NegLabel's files; "all": every lemma
    exclude_lexnames: tuple[str, ...] = ()  # ("noun.animal", "noun.food") reproduces the official files
    parts_of_speech: tuple[str, ...] = ("noun", "adj")  # NegLabel mines nouns and adjectives separately
    extra_words: tuple[tuple[str, str], ...] = ()  # (word, "noun"|"adj") pairs appended, e.g. a domain vocabulary


@dataclass(frozen=True)
class MiningConfig:
    """NegLabel negative-label mining (Jiang et al., ICLR 2024, Sec. 3.2 and official code)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    noun_prompt: str = "the nice {}"  # official prompt for nouns and for ID class names
    adj_prompt: str = "This is a {} photo"  # official prompt for adjectives
    id_prompt: str = "the nice {}"  # prompt of the ID labels the candidates are compared with
    percentile: float = 95.0  # percentile (0-100) of a candidate's cosine similarities to the ID labels
    fraction: float = 0.15  # share of each part of speech kept (the lowest percentile similarities)
    text_batch_size: int = 1024  # prompts encoded per text-encoder call

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"MiningConfig.fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"MiningConfig.percentile must be in [0, 100], got {self.percentile}")
        for name in ("noun_prompt", "adj_prompt", "id_prompt"):
            if getattr(self, name).count("{}") != 1:
                raise ValueError(f"MiningConfig.{name} must contain exactly one '{{}}', got {getattr(self, name)!r}")


@dataclass(frozen=True)
class NegLabelConfig:
    """The NegLabel score (Jiang et al., ICLR 2024, Eq. 4, Sec. 3.3; official defaults)."""

    temperature: float = 0.01  # tau: logits are cosine / tau (100 x cosine)
    n_groups: int | None = 100  # negative-label groups; None for the ungrouped score
    seed: int = 0  # seed of the group permutation
    id_prompt: str = "the nice {}"  # prompt of the ID labels at scoring time


def from_dict(cls, values: dict, where: str = "config"):
    """Return ``cls(**values)`` after checking every key is a field, recursing into nested dataclasses.

    Args:
        cls: a dataclass type of this module (or any dataclass).
        values: a mapping from field names to values, e.g. parsed from JSON or TOML.
        where: a label for error messages (the file or section the values came from).

    Raises:
        ValueError: on an unknown key, naming it and the known fields.
        TypeError: if ``values`` is not a mapping.
    """
    if not isinstance(values, dict):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default
        if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
            default = fields[key].default_factory()
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value, f"{where}.{key}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)
