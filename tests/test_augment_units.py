"""Augmentation building blocks: words, routing, masked-LM inputs and candidates, neighbours, sampling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augment.chunk import Executor, _prepare_part
from augment.config import AugmentConfig
from augment.mlm import build_requests, load_mlm, load_tokenizer
from augment.sampling import CandidateFilter, augment_sentence, row_rng
from augment.vectors import NeighbourIndex, WordVectors, load_vectors
from augment.words import STOP_WORDS, WordSplitter, apply_case, is_eligible
from distillery.bundled import SAMPLE_DIR
from pipelines.errors import DistilleryError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_mlm_dir):
    return load_tokenizer(str(tiny_mlm_dir))


@pytest.fixture(scope="module")
def splitter(tokenizer):
    return WordSplitter(tokenizer)


@pytest.fixture(scope="module")
def mlm(tiny_mlm_dir):
    return load_mlm(str(tiny_mlm_dir), "cpu", "fp32")


def sample_texts(n: int) -> list[str]:
    with open(SAMPLE_DIR / "train.jsonl") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


def test_eligibility_and_stop_words():
    assert {"i", "the", "don't", "'s", "'re", "wouldn't", "y"} <= STOP_WORDS and len(STOP_WORDS) == 173
    assert is_eligible("Dog") and is_eligible("unbelievably")
    for word in ("The", "don", ",", "3d", "co-op", "naïve", "", "'s"):
        assert not is_eligible(word), word


def test_words_spans_and_pieces(splitter, tokenizer):
    text = "Héllo, WORLD!  The naïve café is unbelievably cheap."
    s = splitter.split([text])[0]
    assert s.words == ["hello", ",", "world", "!", "the", "naive", "cafe", "is", "unbelievably", "cheap", "."]
    assert [text[a:b] for a, b in s.spans] == ["Héllo", ",", "WORLD", "!", "The", "naïve", "café", "is",
                                               "unbelievably", "cheap", "."]
    assert [s.words[i] for i in s.eligible] == ["hello", "world", "naive", "cafe", "unbelievably", "cheap"]
    assert s.piece_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(s.pieces[s.words.index("unbelievably")]) > 1 and len(s.pieces[s.words.index("cheap")]) == 1


def prepare(tokenizer, spec, rows):
    """One part prepared as augment's pool does it, in this process."""
    with Executor(0, tokenizer, spec) as pool:
        return pool.submit(_prepare_part, [(rows,)])()[0]


def test_routing_single_piece_to_mlm_multi_piece_to_vectors(tokenizer, mlm):
    prepared = prepare(tokenizer, mlm.input_spec("pair", 1, None),
                       [(0, "text", "an unbelievably cheap house"), (1, "text", ""), (2, "text", None)])
    assert prepared.counts["empty_texts"] == 2 and len(prepared.units) == 1
    unit = prepared.units[0]
    words = unit.sentence.words
    assert [words[i] for i in unit.mlm_words] == ["cheap", "house"]
    assert set(unit.sentence.eligible) - set(unit.mlm_words) == {words.index("unbelievably")}
    assert [r.words for _, r in prepared.requests] == [[words.index("cheap")], [words.index("house")]]
    # --mlm none: every eligible word goes to the vectors
    assert prepare(tokenizer, None, [(0, "text", "an unbelievably cheap house")]).units[0].mlm_words == []


def test_pair_and_single_input_construction(splitter, mlm):
    s = splitter.split(["the cat sat on a warm mat"])[0]
    pieces = s.piece_ids
    cls, sep, mask = mlm.tokenizer.cls_token_id, mlm.tokenizer.sep_token_id, mlm.tokenizer.mask_token_id
    word = s.words.index("warm")
    pair = build_requests(s, [word], mlm.input_spec("pair", 1, None))[0]
    masked = list(pieces)
    masked[word] = mask
    assert pair.ids == [cls, *masked, sep, *pieces, sep]
    assert pair.type_ids == [0] * (len(pieces) + 2) + [1] * (len(pieces) + 1)
    assert pair.positions == [word + 1] and not pair.truncated
    single = build_requests(s, [word], mlm.input_spec("single", 1, None))[0]
    assert single.ids == [cls, *masked, sep] and single.type_ids == [0] * (len(pieces) + 2)


def test_long_text_window_and_masks_per_pass(splitter, mlm):
    s = splitter.split([" ".join(f"word{i} cat" for i in range(40))])[0]
    cats = [i for i, w in enumerate(s.words) if w == "cat"]
    requests = build_requests(s, cats, mlm.input_spec("pair", 1, 32))
    assert all(len(r.ids) <= 32 and r.truncated for r in requests)
    for r, word in zip(requests, cats):
        assert r.ids[r.positions[0]] == mlm.tokenizer.mask_token_id and r.words == [word]
    short = splitter.split(["one two three four five six seven eight nine ten eleven"])[0]
    grouped = build_requests(short, short.eligible, mlm.input_spec("pair", 3, None))
    assert sorted(w for r in grouped for w in r.words) == short.eligible and len(grouped) == 4
    for r in grouped:   # round-robin: words sharing a pass are far apart
        assert all(b - a == 4 for a, b in zip(r.words, r.words[1:]))
        assert sum(1 for t in r.ids if t == mlm.tokenizer.mask_token_id) == len(r.words)


@pytest.mark.parametrize("mode", ["pair", "single"])
def test_batched_candidates_equal_one_at_a_time_and_full_logits(splitter, mlm, mode):
    sentences = splitter.split(sample_texts(40))
    spec = mlm.input_spec(mode, 1, None)
    requests = [r for s in sentences for r in build_requests(s, [i for i in s.eligible if len(s.pieces[i]) == 1],
                                                               spec)]
    assert len(requests) > 60 and len({len(r.ids) for r in requests}) > 5
    batched = mlm.top_k(requests, 15, 64)
    one_by_one = [mlm.top_k([r], 15, 1)[0] for r in requests]
    # Equal up to float rounding: a packed batch's matrix products may round differently from one sequence's on
    # some CPUs (seen on an AMD EPYC: 1 position of 172 with two candidates 1e-6 apart in the other order), so a
    # list may differ only where its candidates' scores (one sequence at a time) tie within 1e-4, and rarely.
    differing = [(r, a, b) for r, a, b in zip(requests, batched, one_by_one) if a != b]
    assert len(differing) <= len(requests) // 50
    with torch.inference_mode():
        for r, a, b in differing:
            scores = mlm._batch_logits([r]).float()
            for position, (x, y) in enumerate(zip(a, b)):
                assert torch.allclose(scores[position, x], scores[position, y], atol=1e-4), (x, y)
    with torch.inference_mode():    # the reference: full-vocabulary logits at every position, batch size 1
        for r, top in zip(requests[:20], batched):
            logits = mlm.model(torch.tensor([r.ids]), token_type_ids=torch.tensor([r.type_ids])).logits
            assert torch.argsort(logits[0, r.positions[0]], descending=True)[:15].tolist() == top[0]
    assert all(not t.startswith("##") for t in mlm.tokens(batched[0][0]))


def test_neighbours_match_brute_force_on_real_glove(glove_txt):
    vectors = load_vectors(str(glove_txt))
    assert vectors.identity["format"] == "gensim" and len(vectors.words) == 20_000
    again = load_vectors(str(glove_txt))        # second open reads the cache
    assert again.identity["sha256"] == vectors.identity["sha256"]
    limit, k = 5_000, 15
    index = NeighbourIndex(vectors, limit, k)
    queries = ["king", "river", "computer", "green", "running", "the", "zzzz-not-a-word", vectors.words[7_000]]
    found = index.neighbours(queries + ["king"])
    unit = np.asarray(vectors.matrix[:limit], dtype=np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for word in queries[:6]:
        i = vectors.words.index(word)
        scores = unit @ unit[i]
        scores[i] = -np.inf
        expected = [vectors.words[j] for j in np.argsort(-scores, kind="stable")[:k]]
        assert found[word] == expected and word not in expected
    assert found["zzzz-not-a-word"] == [] and found[vectors.words[7_000]] == []     # beyond the vocabulary cut
    assert index.stats["cache_hits"] == 1 and index.stats["computed"] == 6


def test_neighbours_title_case_self_and_cut():
    words = ["Paris", "paris", "london", "berlin", "rome", "far"]
    matrix = np.array([[1, 0], [1, 0.01], [1, 0.1], [1, 0.2], [1, 0.3], [1, 0.05]], dtype=np.float32)
    index = NeighbourIndex(WordVectors(words, matrix), limit=5, k=3)
    got = index.neighbours(["Paris", "london"])
    assert got["Paris"] == ["Paris", "London", "Berlin"]       # "paris" title-cased; itself excluded
    assert got["london"] == ["paris", "berlin", "Paris"] and "far" not in got["london"]


def test_sampling_is_seeded_per_row_and_field(splitter):
    s = splitter.split(["The quick brown fox jumps over the lazy dog"])[0]
    cands = [[f"{s.words[i]}{j}" for j in range(5)] for i in s.eligible]
    one, _ = augment_sentence(s, cands, 20, 0.4, row_rng(7, 3, "text"))
    two, _ = augment_sentence(s, cands, 20, 0.4, row_rng(7, 3, "text"))
    other, _ = augment_sentence(s, cands, 20, 0.4, row_rng(7, 3, "text_pair"))
    assert one == two and one != other and len(set(one)) == len(one) and s.text not in one
    assert augment_sentence(s, cands, 20, 0.0, row_rng(7, 3, "text")) == ([], augment_sentence(
        s, cands, 20, 0.0, row_rng(7, 3, "text"))[1])


def test_surface_write_back_keeps_casing_and_punctuation(splitter):
    s = splitter.split(["The Dog, RUNNING fast -- isn't it?"])[0]
    cands = [["cat"] if s.words[i] == "dog" else ["walking"] if s.words[i] == "running" else ["slow"]
             for i in s.eligible]
    surface, counts = augment_sentence(s, cands, 1, 1.0, row_rng(0, 0, "text"))
    assert surface == ["The Cat, WALKING slow -- isn't it?"] and counts.replacements == 3
    reference, _ = augment_sentence(s, cands, 1, 1.0, row_rng(0, 0, "text"), "reference")
    assert reference == ["the cat , walking slow - - isn ' t it ?"]
    assert apply_case("cat", "Dog") == "Cat" and apply_case("cat", "DOG") == "CAT" and apply_case("cat", "A") == "Cat"


def test_candidate_filters():
    f = CandidateFilter(True, True, True, True, frozenset({"[UNK]"}))
    assert f.apply("dog", ["dog", ",", "[UNK]", "Cat", "cow", "..."]) == ["cow"]
    assert f.apply("dog", [",", "dog"]) == ["dog"]          # nothing left: the word itself
    assert CandidateFilter().apply("dog", ["dog", ","]) == ["dog", ","]


def test_task_presets_and_validation():
    assert AugmentConfig(task="SST-2").rounds() == 20 and AugmentConfig(task="mnli").rounds() == 10
    assert AugmentConfig(task="cola", num_aug=3).rounds() == 3 and AugmentConfig().rounds() == 30
    with pytest.raises(DistilleryError):
        AugmentConfig(task="imdb")
    with pytest.raises(DistilleryError):
        AugmentConfig(replace_prob=1.5)


@pytest.mark.parametrize("kind", ["word2vec.bin", "keyedvectors.kv", "cache-folder"])
def test_vector_formats_convert_to_the_same_cache(tmp_path, monkeypatch, kind):
    from gensim.models import KeyedVectors

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    words = [f"w{i}" for i in range(40)]
    matrix = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    kv = KeyedVectors(8)
    kv.add_vectors(words, matrix)
    if kind == "word2vec.bin":
        path = tmp_path / "vectors.bin"
        kv.save_word2vec_format(str(path), binary=True)
    elif kind == "keyedvectors.kv":
        path = tmp_path / "vectors.kv"
        kv.save(str(path))
    else:
        path = load_vectors(str(_save_bin(kv, tmp_path))).identity["cache"]
    loaded = load_vectors(str(path))
    assert loaded.words == words and np.allclose(loaded.matrix, matrix) and loaded.identity["sha256"]
    assert NeighbourIndex(loaded, 40, 3).neighbours(["w0"])["w0"][0] != "w0"


def _save_bin(kv, folder):
    path = folder / "other.bin"
    kv.save_word2vec_format(str(path), binary=True)
    return path


def test_masked_lm_candidates_filtered_by_word_vector_similarity(glove_txt):
    vectors = load_vectors(str(glove_txt))
    index = NeighbourIndex(vectors, 20_000, 5)
    unit = {w: v / np.linalg.norm(v) for w, v in zip(vectors.words[:20_000], np.asarray(vectors.matrix[:20_000],
                                                                                      dtype=np.float64))}
    candidates = ["river", "stream", "car", "Lake", "unknownword", "water"]
    for threshold in (0.3, 0.6):
        expected = [c for c in candidates if c.lower() in unit and unit[c.lower()] @ unit["river"] >= threshold
                    and c.lower() != "river"]
        assert index.similar("River", candidates, threshold) == expected
    assert index.similar("river", candidates, 0.6) != index.similar("river", candidates, 0.0)
    assert index.similar("notaword", candidates, 0.1) == []
