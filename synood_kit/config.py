"""Stage configurations: one frozen dataclass per stage, defaults = the paper's (or official code's) values.

Presets are values, not files: :func:`preset` returns the configuration of a named setting
(``"paper"`` for CLIP ViT-B/16 + SD-2-inpainting on ImageNet, ``"miniworld"`` for the offline mini-world).
A config file, where a command accepts one, maps onto these dataclasses field by field.
"""

from __future__ import annotations

import dataclasses
import math
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
    "read_config",
    "read_table",
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
    max_words: int | None = None  # cap per part of speech: an evenly spaced sample of WordNet (quick runs); None: all

    def __post_init__(self) -> None:
        if self.max_words is not None and (
            isinstance(self.max_words, bool) or not isinstance(self.max_words, int) or self.max_words < 1
        ):
            raise ValueError(f"CorpusConfig.max_words must be None or an integer >= 1, got {self.max_words!r}")
        if self.lemmas not in ("first", "all"):
            raise ValueError(f"CorpusConfig.lemmas must be 'first' or 'all', got {self.lemmas!r}")
        if not self.parts_of_speech or not set(self.parts_of_speech) <= {"noun", "adj"}:
            raise ValueError(
                f"CorpusConfig.parts_of_speech must be a non-empty subset of ('noun', 'adj'), got "
                f"{self.parts_of_speech!r}"
            )
        if not all(isinstance(x, str) for x in self.exclude_lexnames):
            raise ValueError(
                f"CorpusConfig.exclude_lexnames must be strings such as 'noun.animal', got {self.exclude_lexnames!r}"
            )
        for pair in self.extra_words:
            if not (
                isinstance(pair, (tuple, list))
                and len(pair) == 2
                and isinstance(pair[0], str)
                and pair[0].strip()
                and pair[1] in ("noun", "adj")
            ):
                raise ValueError(f"CorpusConfig.extra_words: extra word {pair!r} is not a (word, 'noun' or 'adj') pair")


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
        if self.text_batch_size < 1:
            raise ValueError(f"MiningConfig.text_batch_size must be >= 1, got {self.text_batch_size}")
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

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(f"NegLabelConfig.temperature must be a finite number > 0, got {self.temperature!r}")
        if self.n_groups is not None and (
            isinstance(self.n_groups, bool) or not isinstance(self.n_groups, int) or self.n_groups < 1
        ):
            raise ValueError(f"NegLabelConfig.n_groups must be None or an integer >= 1, got {self.n_groups!r}")
        if not isinstance(self.id_prompt, str) or self.id_prompt.count("{}") != 1:
            raise ValueError(f"NegLabelConfig.id_prompt must contain exactly one '{{}}', got {self.id_prompt!r}")


def from_dict(cls, values: dict, where: str = "config"):
    """Return ``cls(**values)`` after checking every key is a field, recursing into nested dataclasses.

    Args:
        cls: a dataclass type of this module (or any dataclass).
        values: a mapping from field names to values, e.g. parsed from JSON or TOML.
        where: a label for error messages (the file or section the values came from).

    Raises:
        ValueError: on an unknown key, naming it and the known fields, or a value the dataclass refuses.
        TypeError: if ``values`` is not a mapping, or a value's type differs from its field default's.
    """
    if not isinstance(values, dict):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    if any(not isinstance(k, str) for k in values):
        raise TypeError(f"{where}: field names must be strings, got {sorted(map(repr, values))[:5]}")
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
        kwargs[key] = _checked_type(value, default, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None


def _checked_type(value, default, where: str):
    """Return ``value`` if it has the type of the field's default (an int where a float is expected becomes one)."""
    if default is None or default is dataclasses.MISSING:
        return value  # optional fields are checked by the dataclass itself
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    raise TypeError(f"{where}: expected {expected.__name__} (like the default {default!r}), got {value!r}")


def read_table(path: str | Path) -> dict:
    """Return the top-level table of a JSON or TOML file (by suffix).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a .json/.toml file, not valid JSON/TOML, or not a table at the top.
    """
    values = _read_values(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table (an object) at the top, got {type(values).__name__}")
    return values


def _read_values(path: str | Path):
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix.lower() not in (".json", ".toml"):
        raise ValueError(f"{path}: expected a .json or .toml config file, got suffix {path.suffix!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
        values = json.loads(text) if path.suffix.lower() == ".json" else _toml().loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()} ({type(e).__name__}: {e})") from None
    return values


def read_config(path: str | Path, cls, section: str | None = None, defaults: dict | None = None):
    """Return the dataclass ``cls`` built from a JSON or TOML file (by suffix), e.g. ``read_config("run.toml",
    MiningConfig)``.

    Args:
        path: a ``.json`` or ``.toml`` file whose (section's) keys are ``cls`` fields; nested dataclasses are
            nested tables / objects; unset fields keep their defaults.
        cls: the dataclass.
        section: read this top-level table / key instead of the whole file.
        defaults: values for top-level fields the file leaves out (before the dataclass defaults).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not valid JSON/TOML, lacks ``section``, has unknown keys or refused values.
        TypeError: if a value has the wrong type.
    """
    values = _read_values(path)
    where = str(path)
    if section is not None:
        if not isinstance(values, dict) or section not in values:
            raise ValueError(f"{path} has no section {section!r}")
        values, where = values[section], f"{path}[{section}]"
    if defaults and isinstance(values, dict):
        values = {**defaults, **values}
    return from_dict(cls, values, where)


def _toml():
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        raise ValueError("TOML config files need Python 3.11+ (tomllib); use a .json file") from None
    return tomllib
