"""Length bucketing, out-of-memory back-off, progress and cancellation."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2s_engine.errors import C2SError, CancelledError, InsufficientMemoryError
from c2s_engine.inference import embed, generate, run_batches, score_labels
from c2s_engine.inference.batching import longest_first

pytest_plugins = ["tiny_checkpoints"]

PROMPTS = ["CD3E CD3D IL7R :", "LYZ :", "MALAT1 B2M TMSB4X EEF1A1 RPL13 :", "NKG7 GNLY :",
           "CD74 HLA-DRA :"]


@pytest.fixture(scope="module")
def tiny(tiny_gpt_neox_dir):
    return (AutoModelForCausalLM.from_pretrained(tiny_gpt_neox_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_gpt_neox_dir))


def fail_above(model, monkeypatch, limit: int) -> list[int]:
    """Make ``model`` raise CUDA-style OOM for batches above ``limit`` rows; log batch sizes."""
    seen: list[int] = []
    forward = model.forward

    @functools.wraps(forward)  # generate inspects the forward signature
    def limited(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", limited)
    return seen


def test_longest_first_keeps_input_order_among_ties():
    assert longest_first([3, 7, 3, 9, 7]) == [3, 1, 4, 0, 2]


def test_batches_are_length_neighbours_and_results_in_input_order():
    lengths = [5, 1, 9, 3, 7, 2]
    batches = []

    def work(indices):
        batches.append(list(indices))
        return [f"item{i}" for i in indices]

    run = run_batches(lengths, work, batch_size=2)
    assert batches == [[2, 4], [0, 3], [5, 1]]
    assert run.results == [f"item{i}" for i in range(6)]
    assert run.batch_size == 2


def test_out_of_memory_halves_the_batch_and_retries_it():
    attempts = []

    def work(indices):
        attempts.append(len(indices))
        if len(indices) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [i * 10 for i in indices]

    run = run_batches([1] * 10, work, batch_size=8)
    assert attempts == [8, 4, 2, 2, 2, 2, 2]
    assert run.batch_size == 2
    assert run.results == [i * 10 for i in range(10)]


def test_out_of_memory_on_a_single_item_is_a_clear_error():
    def work(indices):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(InsufficientMemoryError) as info:
        run_batches([4, 4], work, batch_size=2, unit="cells")
    assert isinstance(info.value, C2SError)
    assert str(info.value).startswith(
        "The device ran out of memory on a single item of cells (batch size 1). Fix: use fewer "
        "genes per cell")


def test_progress_reports_every_batch():
    calls = []
    run_batches([1] * 5, lambda idx: idx, batch_size=2,
                progress=lambda done, total, rate: calls.append((done, total, rate)))
    assert [(d, t) for d, t, _ in calls] == [(2, 5), (4, 5), (5, 5)]
    assert all(rate > 0 for _, _, rate in calls)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_between_batches_with_the_partial_results(kind):
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set
    calls = []

    def work(indices):
        calls.append(indices)
        return [i + 100 for i in indices]

    with pytest.raises(CancelledError) as info:
        run_batches([3, 2, 1, 0], work, batch_size=2, cancel=cancel,
                    progress=lambda done, total, rate: event.set())
    assert len(calls) == 1
    assert (info.value.done, info.value.total) == (2, 4)
    assert info.value.partial == {0: 100, 1: 101}
    assert str(info.value).startswith("Cancelled after 2 of 4 cells.")


def test_generate_backs_off_on_out_of_memory(tiny, monkeypatch):
    model, tok = tiny
    expected = generate(model, tok, PROMPTS, max_new_tokens=4, stop=None, batch_size=4)
    seen = fail_above(model, monkeypatch, limit=2)
    result = generate(model, tok, PROMPTS, max_new_tokens=4, stop=None, batch_size=4)
    assert result.batch_size == 2
    assert seen[0] == 4 and max(seen[1:]) == 2
    assert result.completions == expected.completions


def test_embed_and_scoring_back_off_on_out_of_memory(tiny, monkeypatch):
    model, tok = tiny
    vectors = embed(model, tok, PROMPTS, batch_size=4)
    scores = score_labels(model, tok, PROMPTS, ["NK", "B"], batch_size=4)
    fail_above(model, monkeypatch, limit=1)
    assert np.allclose(embed(model, tok, PROMPTS, batch_size=4), vectors, atol=1e-5)
    small = score_labels(model, tok, PROMPTS, ["NK", "B"], batch_size=4)
    assert small.batch_size == 1
    assert np.allclose(small.loglik, scores.loglik, atol=1e-4)


def test_generate_cancel_keeps_finished_prompts(tiny):
    model, tok = tiny
    event = threading.Event()
    with pytest.raises(CancelledError) as info:
        generate(model, tok, PROMPTS, max_new_tokens=3, stop=None, batch_size=2, cancel=event,
                 progress=lambda done, total, rate: event.set())
    assert (info.value.done, info.value.total) == (2, 5)
    singles = {i: generate(model, tok, [PROMPTS[i]], max_new_tokens=3, stop=None).completions[0]
               for i in info.value.partial}
    # The longest prompts run first: indices 2 (5 genes) and 0 (3 genes).
    assert sorted(info.value.partial) == [0, 2]
    assert {i: g.completion for i, g in info.value.partial.items()} == singles
