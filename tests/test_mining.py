"""WordNet corpus and NegLabel negative-label mining, end to end with a tiny CLIP over the full corpus."""

from __future__ import annotations

import types

import numpy as np
import open_clip
import pytest
import torch

from synood_kit.config import CorpusConfig, MiningConfig
from synood_kit.negatives import NegativeLabels, build_corpus, mine_negative_labels, percentile_similarity
from synood_kit.wordnet import OFFICIAL_EXCLUDED_LEXNAMES, Corpus, clean_word, load_wordnet_corpus

IMAGENET = list(open_clip.IMAGENET_CLASSNAMES)


@pytest.fixture(scope="module")
def default_corpus() -> Corpus:
    return load_wordnet_corpus()


# ---------------------------------------------------------------- corpus


def test_default_corpus_counts(default_corpus):
    assert default_corpus.count("noun") == 67_092
    assert default_corpus.count("adj") == 14_001
    assert len(default_corpus) == 81_093


def test_official_lexname_filter_counts():
    corpus = load_wordnet_corpus(exclude_lexnames=OFFICIAL_EXCLUDED_LEXNAMES)
    assert corpus.count("noun") == 58_424
    assert corpus.count("adj") == 14_001
    assert "noun.animal" in corpus.description and "noun.food" in corpus.description


def test_corpus_is_clean_ordered_and_deduplicated(default_corpus):
    words, pos = default_corpus.words, default_corpus.pos
    # Nouns first, then adjectives.
    n_nouns = default_corpus.count("noun")
    assert set(pos[:n_nouns]) == {"noun"} and set(pos[n_nouns:]) == {"adj"}
    # No duplicate (case-insensitive) within a part of speech.
    keys = [(w.lower(), p) for w, p in zip(words, pos, strict=True)]
    assert len(set(keys)) == len(keys)
    # Every word is already clean: no underscores, no markers, no junk.
    assert all(clean_word(w) == w for w in words)
    dropped = int(default_corpus.description.split(" junk lemma")[0].rsplit(" ", 1)[1])
    assert dropped > 0  # junk exists in the raw files and was removed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ice_cream", "ice cream"),
        ("galore(ip)", "galore"),
        ("beautiful(a)", "beautiful"),
        ("asleep(p)", "asleep"),
        ("St._John's_wort", "St. John's wort"),
        ("able-bodied", "able-bodied"),
        ("[rhizoidal", None),
        (".22", None),
        ("'hood", None),
        ("a", None),  # fewer than two letters
        ("3-D", None),  # starts with a digit
        ("x_", None),  # one letter after cleaning
    ],
)
def test_clean_word(raw, expected):
    assert clean_word(raw) == expected


def test_corpus_options_and_errors(default_corpus):
    every_lemma = load_wordnet_corpus(lemmas="all", parts_of_speech=("adj",))
    assert set(every_lemma.pos) == {"adj"}
    assert every_lemma.count("adj") > default_corpus.count("adj")
    with pytest.raises(ValueError, match="lemmas must be"):
        load_wordnet_corpus(lemmas="some")
    with pytest.raises(ValueError, match="verb"):
        load_wordnet_corpus(parts_of_speech=("noun", "verb"))
    with pytest.raises(ValueError, match="noun.animals"):
        load_wordnet_corpus(exclude_lexnames=("noun.animals",))


# ---------------------------------------------------------------- percentile statistic


@pytest.mark.parametrize("percentile", [0.0, 5.0, 33.3, 50.0, 95.0, 100.0])
def test_percentile_similarity_matches_numpy(percentile):
    rng = np.random.default_rng(0)
    cand, ids = rng.normal(size=(50, 16)), rng.normal(size=(37, 16))
    cos = (cand / np.linalg.norm(cand, axis=1, keepdims=True)) @ (ids / np.linalg.norm(ids, axis=1, keepdims=True)).T
    expected = np.percentile(cos, percentile, axis=1)  # linear interpolation
    got = percentile_similarity(
        torch.tensor(cand, dtype=torch.float32),
        torch.tensor(ids, dtype=torch.float32),
        percentile,
        batch_size=7,
    )
    assert got.shape == (50,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------- mining end to end


class _CountingText:
    """A stand-in for a ClipModel that counts text-encoder calls (mining only needs these attributes)."""

    def __init__(self, clip, fail: bool = False):
        self.name, self.fingerprint = clip.name, clip.fingerprint
        self._clip, self.fail, self.calls = clip, fail, 0

    def encode_text(self, texts, batch_size=1024, progress=True):
        if self.fail:
            raise AssertionError("the text encoder was called although the features were cached")
        self.calls += 1
        return self._clip.encode_text(texts, batch_size=batch_size, progress=progress)


@pytest.fixture(scope="module")
def mined(tiny_clip, tmp_path_factory):
    """Mine ImageNet-1k negatives from the full default WordNet corpus (~81k prompts) once for this module."""
    cache = tmp_path_factory.mktemp("mining_cache")
    corpus = build_corpus(MiningConfig(), IMAGENET)
    result = mine_negative_labels(tiny_clip, IMAGENET, corpus=corpus, cache_root=cache, progress=False)
    return types.SimpleNamespace(result=result, corpus=corpus, cache=cache)


def test_build_corpus_removes_the_id_class_names(mined, default_corpus):
    id_lower = {c.lower() for c in IMAGENET}
    in_wordnet = {w.lower() for w in default_corpus.words} & id_lower
    assert len(in_wordnet) > 100  # many ImageNet names are WordNet words, so the removal is tested
    assert not {w.lower() for w in mined.corpus.words} & id_lower
    assert len(mined.corpus) == len(default_corpus) - sum(w.lower() in id_lower for w in default_corpus.words)


def test_mining_keeps_fifteen_percent_of_each_part_of_speech(mined):
    labels = mined.result.labels
    for pos in ("noun", "adj"):
        candidates = mined.corpus.count(pos)
        kept = sum(p == pos for p in labels.pos)
        assert kept == int(candidates * 0.15)
        assert labels.provenance["counts"][pos] == {"candidates": candidates, "kept": kept}
    assert len(labels) == int(mined.corpus.count("noun") * 0.15) + int(mined.corpus.count("adj") * 0.15)
    # the counts quoted in docs/neglabel.md and README.md (they depend on the corpus, not on the model)
    assert (mined.corpus.count("noun"), mined.corpus.count("adj")) == (66_360, 13_990)
    assert (sum(p == "noun" for p in labels.pos), sum(p == "adj" for p in labels.pos)) == (9_954, 2_098)


def test_mined_labels_are_ordered_and_are_the_farthest_candidates(mined):
    res = mined.result
    labels = res.labels
    n_nouns = sum(p == "noun" for p in labels.pos)
    assert set(labels.pos[:n_nouns]) == {"noun"} and set(labels.pos[n_nouns:]) == {"adj"}
    stats = np.array(labels.percentile_similarity)
    for block in (stats[:n_nouns], stats[n_nouns:]):
        assert np.all(np.diff(block) >= 0)  # ascending: farthest from the ID labels first
    # The kept words carry their candidate statistic, and no dropped candidate of the same part of speech
    # lies farther from the ID labels than a kept one.
    stat_of = {
        (w, p): s for w, p, s in zip(res.candidate_words, res.candidate_pos, res.candidate_similarity, strict=True)
    }
    kept = set(zip(labels.words, labels.pos, strict=True))
    for w, p, s in zip(labels.words, labels.pos, stats, strict=True):
        assert stat_of[(w, p)] == pytest.approx(s)
    for pos in ("noun", "adj"):
        kept_max = max(s for (w, p), s in stat_of.items() if p == pos and (w, p) in kept)
        dropped_min = min(s for (w, p), s in stat_of.items() if p == pos and (w, p) not in kept)
        assert kept_max <= dropped_min
        assert res.thresholds[pos] == pytest.approx(kept_max)


def test_mined_labels_use_the_official_prompts_and_exclude_id_names(mined):
    labels = mined.result.labels
    for w, p, prompt in zip(labels.words, labels.pos, labels.prompts, strict=True):
        assert prompt == (f"the nice {w}" if p == "noun" else f"This is a {w} photo")
    assert not {w.lower() for w in labels.words} & {c.lower() for c in IMAGENET}


def test_negative_labels_save_load_roundtrip(mined, tmp_path):
    labels = mined.result.labels
    path = labels.save(tmp_path / "negatives.json")
    loaded = NegativeLabels.load(path)
    assert loaded == labels  # words, order, prompts, statistics and provenance
    assert loaded.fingerprint == labels.fingerprint
    assert loaded.provenance["model_fingerprint"] == mined.result.labels.provenance["model_fingerprint"]
    assert loaded.provenance["config"]["noun_prompt"] == "the nice {}"
    assert [p.name for p in tmp_path.iterdir()] == ["negatives.json"]  # no temporary left behind


def test_negative_labels_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        NegativeLabels.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"labels": [{"word": "x"}]}')
    with pytest.raises(ValueError, match="not a negative-label list"):
        NegativeLabels.load(bad)
    empty = tmp_path / "empty.json"
    empty.write_text('{"labels": []}')
    with pytest.raises(ValueError, match="no negative labels"):
        NegativeLabels.load(empty)


def test_mining_reuses_cached_text_features(mined, tiny_clip):
    files = sorted((mined.cache / "text_features").glob("*.safetensors"))
    assert len(files) == 2  # the ID prompts and the candidate prompts
    stamps = {f: f.stat().st_mtime_ns for f in files}
    # A second run must not encode a single prompt: a text encoder that fails proves it.
    no_encoder = _CountingText(tiny_clip, fail=True)
    again = mine_negative_labels(no_encoder, IMAGENET, corpus=mined.corpus, cache_root=mined.cache, progress=False)
    assert again.labels.words == mined.result.labels.words
    np.testing.assert_array_equal(again.candidate_similarity, mined.result.candidate_similarity)
    assert sorted((mined.cache / "text_features").glob("*.safetensors")) == files
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


SMALL_CORPUS = Corpus(
    ("stone", "cloud", "ladder", "whisper", "glacier", "blue", "quiet", "angular"),
    ("noun",) * 5 + ("adj",) * 3,
    "a small test corpus",
)


def test_text_feature_cache_key_follows_the_prompt(tiny_clip, cache_root):
    counting = _CountingText(tiny_clip)
    cfg = MiningConfig(fraction=0.5)
    first = mine_negative_labels(counting, ["dog", "cat"], cfg, corpus=SMALL_CORPUS, progress=False)
    cached = sorted((cache_root / "text_features").iterdir())
    assert len(cached) == 2 and counting.calls == 2
    # Same prompts: nothing new is encoded or written.
    mine_negative_labels(counting, ["dog", "cat"], cfg, corpus=SMALL_CORPUS, progress=False)
    assert counting.calls == 2 and sorted((cache_root / "text_features").iterdir()) == cached
    # A new adjective prompt changes the candidate prompts, hence the key: one new file, one new encoding.
    other = MiningConfig(fraction=0.5, adj_prompt="A {} picture")
    second = mine_negative_labels(counting, ["dog", "cat"], other, corpus=SMALL_CORPUS, progress=False)
    assert counting.calls == 3
    assert len(list((cache_root / "text_features").iterdir())) == 3
    assert all(
        p.startswith("A ") for p, pos in zip(second.labels.prompts, second.labels.pos, strict=True) if pos == "adj"
    )
    assert first.labels.prompts != second.labels.prompts
    # The mined list on the small corpus: int(5 * 0.5) nouns and int(3 * 0.5) adjectives.
    assert first.labels.pos == ("noun", "noun", "adj")


def test_mining_errors(tiny_clip, cache_root):
    with pytest.raises(ValueError, match="id_class_names is empty"):
        mine_negative_labels(tiny_clip, [], corpus=SMALL_CORPUS, progress=False)
    nouns_only = Corpus(SMALL_CORPUS.words[:5], SMALL_CORPUS.pos[:5], "nouns only")
    with pytest.raises(ValueError, match="no adj candidates"):
        mine_negative_labels(tiny_clip, ["dog"], corpus=nouns_only, progress=False)
    # An empty corpus is an error, not a silent switch to the full WordNet corpus.
    with pytest.raises(ValueError, match="empty"):
        mine_negative_labels(tiny_clip, ["dog"], corpus=Corpus((), (), "empty"), progress=False)
    with pytest.raises(ValueError, match="extra word"):
        build_corpus(MiningConfig(corpus=CorpusConfig(extra_words=(("run", "verb"),))), ["dog"])
