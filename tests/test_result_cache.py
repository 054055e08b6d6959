"""Per-item result cache: keys, JSON/npy storage, location, and reuse without the model."""

from __future__ import annotations

import functools
import sqlite3

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2s_engine.inference import (
    CacheKey,
    ResultCache,
    call_key,
    content_hash,
    default_cache_dir,
    embed,
    generate,
)

pytest_plugins = ["tiny_checkpoints"]

PROMPTS = ["CD3E CD3D IL7R :", "LYZ S100A9 :", "NKG7 GNLY FCGR3A :"]


@pytest.fixture(scope="module")
def tiny(tiny_gpt_neox_dir):
    return (AutoModelForCausalLM.from_pretrained(tiny_gpt_neox_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_gpt_neox_dir))


def count_forwards(model, monkeypatch) -> list[int]:
    calls: list[int] = []
    forward = model.forward

    @functools.wraps(forward)
    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return calls


def test_values_round_trip_as_json_or_npy(tmp_path):
    cache = ResultCache(tmp_path)
    key = CacheKey(call="c", item=content_hash("CD3E CD3D"))
    assert cache.get(key) is None
    cache.put(key, {"answer": "NK cell", "n_new_tokens": 3, "scores": [0.25, -1.5]})
    assert cache.get(key) == {"answer": "NK cell", "n_new_tokens": 3, "scores": [0.25, -1.5]}
    vector = np.array([0.1, -2.0, 3.5], dtype=np.float32)
    cache.put(CacheKey("c", "v"), vector)
    back = cache.get(CacheKey("c", "v"))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vector)
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        kinds = sorted(k for (k,) in con.execute("SELECT kind FROM results"))
    assert kinds == ["json", "npy"]


def test_object_arrays_are_refused_so_nothing_is_ever_pickled(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle=False"):
        ResultCache(tmp_path).put(CacheKey("c", "x"), np.array([{"a": 1}], dtype=object))


def test_call_keys_depend_on_model_revision_task_and_parameters_only():
    base = call_key("vandijklab/C2S-Pythia-410m", "abc123", "generate",
                    {"max_new_tokens": 8, "stop": [".", "\n"], "seed": 0})
    same = call_key("vandijklab/C2S-Pythia-410m", "abc123", "generate",
                    {"seed": 0, "stop": (".", "\n"), "max_new_tokens": 8})
    assert base == same and len(base) == 64
    assert len({base,
                call_key("vandijklab/C2S-Pythia-410m", "def456", "generate",
                         {"max_new_tokens": 8, "stop": [".", "\n"], "seed": 0}),
                call_key("vandijklab/C2S-Pythia-410m", "abc123", "embed",
                         {"max_new_tokens": 8, "stop": [".", "\n"], "seed": 0}),
                call_key("vandijklab/C2S-Pythia-410m", "abc123", "generate",
                         {"max_new_tokens": 9, "stop": [".", "\n"], "seed": 0})}) == 4


@pytest.mark.parametrize("params", [{"t": float("nan")}, {"obj": object()}])
def test_parameters_must_be_plain_json(params):
    with pytest.raises(ValueError, match="plain JSON values"):
        call_key("m", "r", "generate", params)


def test_location_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("C2S_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    ResultCache().put(CacheKey("c", "i"), 1)
    assert (tmp_path / "here" / "results.sqlite").is_file()
    monkeypatch.delenv("C2S_CACHE_DIR")
    assert str(default_cache_dir()).endswith(".cache/c2s-studio")


def test_a_repeated_call_reuses_results_without_the_model(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cache = ResultCache(tmp_path)
    call = call_key("tiny-neox", "local", "generate", {"max_new_tokens": 4})

    def compute(texts):
        result = generate(model, tok, texts, max_new_tokens=4, stop=None)
        return [{"answer": a, "n_new_tokens": n}
                for a, n in zip(result.answers, result.n_new_tokens, strict=True)]

    first, hits = cache.map(call, PROMPTS, compute)
    assert hits == 0
    forwards = count_forwards(model, monkeypatch)
    again, hits = cache.map(call, PROMPTS, compute)
    assert hits == 3 and forwards == []
    assert again == first
    # A partial overlap computes only the new prompt.
    asked = []
    more, hits = cache.map(call, [PROMPTS[1], "CD74 HLA-DRA :"],
                           lambda texts: asked.extend(texts) or compute(texts))
    assert hits == 1 and asked == ["CD74 HLA-DRA :"]
    assert more[0] == first[1]
    assert more[1]["answer"] == generate(model, tok, ["CD74 HLA-DRA :"], max_new_tokens=4,
                                         stop=None).answers[0]


def test_cached_embeddings_come_back_identical(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cache = ResultCache(tmp_path)
    call = call_key("tiny-neox", "local", "embed", {"layer": -1})
    computed, _ = cache.map(call, PROMPTS, lambda texts: list(embed(model, tok, texts)))
    forwards = count_forwards(model, monkeypatch)
    cached, hits = cache.map(call, PROMPTS, lambda texts: list(embed(model, tok, texts)))
    assert hits == 3 and forwards == []
    np.testing.assert_array_equal(np.vstack(cached), np.vstack(computed))
    np.testing.assert_allclose(np.vstack(cached), embed(model, tok, PROMPTS), atol=1e-6)


def test_duplicate_texts_are_computed_once(tmp_path):
    asked = []
    values, hits = ResultCache(tmp_path).map(
        "c", ["a", "b", "a"], lambda texts: asked.extend(texts) or [t.upper() for t in texts])
    assert values == ["A", "B", "A"] and asked == ["a", "b"] and hits == 0
