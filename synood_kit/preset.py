"""Presets: every hyper-parameter of a recipe in one typed value, read from a TOML file.

A :class:`Preset` holds the models and one frozen dataclass per stage (synthesis, mining, scoring, the two
fine-tuning stages). The kit ships three, as files in ``synood_kit/presets/`` that every command reads with
``--config NAME|FILE`` and every notebook with its ``preset`` parameter:

* ``miniworld``: the offline mini-world recipe (the shipped tiny models; the official stage values where they
  apply);
* ``paper``: the official recipe's hyper-parameters on ImageNet with the paper's models (CLIP ViT-B/16, Stable
  Diffusion 2 in-painting, LLaVA-1.5, a ResNet-50 guidance classifier), with the kit's fixes of the official
  code's defects (docs/method.md);
* ``official``: the same, defects included where they are a choice (the unreachable margin -5, only 2 of 3
  updates reach the image, the reply cut mid-word at 73 characters).

A preset file names every field; a file of your own may name only the fields it changes (the rest keep the
dataclass defaults). :meth:`Preset.override` changes fields by dotted name, as the command line's options do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import MiningConfig, read_config
from .evaluation import ZeroShotConfig
from .finetune import AdapterConfig, LabelTuneConfig
from .synthesis_run import SynthesisSettings

__all__ = ["ModelsConfig", "Preset", "load_preset", "preset_names", "preset_toml"]

PRESETS_DIR = Path(__file__).with_name("presets")


@dataclass(frozen=True)
class ModelsConfig:
    """The models of a run: names, folders or files, as their loaders take them."""

    clip: str = "miniworld"  # open_clip architecture (ViT-B-16), local folder, or "miniworld"
    pretrained: str | None = None  # open_clip pretrained tag (openai) or checkpoint file, with an architecture name
    pipeline: str = "miniworld"  # in-painting pipeline: diffusers folder, hub id, or "miniworld"
    classifier: str = "miniworld"  # guidance / MSP classifier: folder, "miniworld", torchvision name, or "none"
    classifier_weights: str | None = None  # torchvision weights enum name (IMAGENET1K_V2) with a torchvision name
    mllm: str = "miniworld"  # context MLLM: transformers folder, hub id or "miniworld"; the model name at an endpoint
    mllm_endpoint: str = ""  # an OpenAI-compatible base URL (vLLM, SGLang, Ollama); empty: run the MLLM locally
    device: str = "cpu"  # torch device of every model


@dataclass(frozen=True)
class Preset:
    """Every hyper-parameter of a recipe (see the module docstring)."""

    name: str = "miniworld"  # the preset's name, recorded with every run
    models: ModelsConfig = field(default_factory=ModelsConfig)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)  # stages 1-5
    mining: MiningConfig = field(default_factory=MiningConfig)  # NegLabel's negative labels
    scores: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # MCM, NegLabel and energy scoring
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # stage 6A (official values)
    labels: LabelTuneConfig = field(default_factory=LabelTuneConfig)  # stage 6B (official values)
    n_boot: int = 200  # bootstrap replicates of every table's 95% intervals (0: none)

    def __post_init__(self) -> None:
        if (
            isinstance(self.n_boot, bool)
            or not isinstance(self.n_boot, int)
            or not (self.n_boot == 0 or self.n_boot >= 10)
        ):
            raise ValueError(f"Preset.n_boot must be 0 (no intervals) or an integer >= 10, got {self.n_boot!r}")

    def mining_for(self, benchmark) -> MiningConfig:
        """Return the mining settings for ``benchmark``: this preset's, with the benchmark's own vocabulary (the
        mini-world's words) added to the corpus."""
        words = tuple(benchmark.annotations.vocabulary)
        if not words:
            return self.mining
        corpus = dataclasses.replace(self.mining.corpus, extra_words=(*self.mining.corpus.extra_words, *words))
        return dataclasses.replace(self.mining, corpus=corpus)

    def override(self, values: Mapping[str, object]) -> Preset:
        """Return this preset with fields changed by dotted name, e.g. ``{"models.clip": "ViT-B-16",
        "synthesis.guidance.rounds": 0}``; ``None`` values are ignored (an option that was not given).

        Raises:
            ValueError: for an unknown field (naming the known ones) or a value its dataclass refuses.
            TypeError: for a value of the wrong type.
        """
        return _override(self, {k: v for k, v in values.items() if v is not None}, "preset")

    def to_dict(self) -> dict:
        """Return the preset as nested plain values (JSON-ready)."""
        import json

        return json.loads(json.dumps(dataclasses.asdict(self)))


def _override(obj, values: Mapping[str, object], where: str):
    from .config import _checked_type

    fields = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            raise ValueError(f"{where}: unknown field {key!r}; {type(obj).__name__} has {sorted(fields)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            current = getattr(obj, head)
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            changes[head] = _checked_type(value, current, f"{where}.{head}")
    for head, sub in nested.items():
        child = getattr(obj, head)
        if not dataclasses.is_dataclass(child):
            raise ValueError(f"{where}.{head} is a value, not a section: cannot set {sorted(sub)}")
        changes[head] = _override(child, sub, f"{where}.{head}")
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None


def preset_names() -> list[str]:
    """Return the names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_preset(source: str | Path | Preset = "miniworld") -> Preset:
    """Return a preset: a shipped one by name (``"miniworld"``, ``"paper"``, ``"official"``), a TOML/JSON file,
    or a :class:`Preset` as it is.

    Raises:
        FileNotFoundError: for a name that is neither a shipped preset nor a file.
        ValueError, TypeError: for a file with unknown fields or refused values, naming the file and field.
    """
    if isinstance(source, Preset):
        return source
    text = str(source)
    path = PRESETS_DIR / f"{text}.toml" if text in preset_names() else Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"preset {text!r} is neither a shipped preset ({', '.join(preset_names())}) nor a .toml/.json file"
        )
    return read_config(path, Preset, defaults={"name": path.stem})


def preset_toml(preset: Preset) -> str:
    """Return a preset as TOML text naming every field (``synood config show``; a start for a file of your own)."""
    lines: list[str] = []

    def emit(obj, section: str) -> None:
        scalars = [f for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(getattr(obj, f.name))]
        tables = [f for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]
        if section:
            lines.append(f"\n[{section}]")
        for f in scalars:
            value = getattr(obj, f.name)
            if value is None:
                lines.append(f"# {f.name} is unset")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        for f in tables:
            emit(getattr(obj, f.name), f"{section}.{f.name}" if section else f.name)

    emit(preset, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)
