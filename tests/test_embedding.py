"""Embeddings: masked mean of a hidden layer, independent of batch neighbours."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2s_engine.errors import CancelledError
from c2s_engine.inference import embed

pytest_plugins = ["tiny_checkpoints"]

SHORT = "CD3E CD3D IL7R"
LONG = "MALAT1 B2M TMSB4X EEF1A1 RPL13 RPS27 CD74 HLA-DRA LYZ S100A9 S100A8 CD3E NKG7 GNLY"


def load(path, arch):
    extra = {"attn_implementation": "eager"} if arch == "gemma2" else {}
    return (AutoModelForCausalLM.from_pretrained(path, **extra).eval(),
            AutoTokenizer.from_pretrained(path))


@pytest.fixture(scope="module", params=["gpt_neox", "gemma2"])
def tiny(request, tiny_gpt_neox_dir, tiny_gemma2_dir):
    path = tiny_gpt_neox_dir if request.param == "gpt_neox" else tiny_gemma2_dir
    return load(path, request.param)


def hand_mean(model, tok, text: str, layer: int) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([tok(text)["input_ids"]]), output_hidden_states=True)
    return out.hidden_states[layer][0].float().mean(dim=0).numpy()


@pytest.mark.parametrize("layer", [-1, 1])
def test_embedding_is_the_mean_of_the_chosen_layer(tiny, layer):
    model, tok = tiny
    vectors = embed(model, tok, [SHORT, LONG], layer=layer, batch_size=2)
    assert vectors.shape == (2, model.config.hidden_size)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0], hand_mean(model, tok, SHORT, layer), atol=1e-5)
    np.testing.assert_allclose(vectors[1], hand_mean(model, tok, LONG, layer), atol=1e-5)


def test_layer_zero_is_the_mean_token_embedding(tiny_gpt_neox_dir):
    model, tok = load(tiny_gpt_neox_dir, "gpt_neox")
    ids = tok(SHORT)["input_ids"]
    expected = model.get_input_embeddings().weight[ids].mean(dim=0).detach().numpy()
    np.testing.assert_allclose(embed(model, tok, [SHORT], layer=0)[0], expected, atol=1e-6)


def test_padding_does_not_change_an_embedding(tiny):
    model, tok = tiny
    alone = embed(model, tok, [SHORT])[0]
    batched = embed(model, tok, [LONG, SHORT, LONG], batch_size=3)
    np.testing.assert_allclose(batched[1], alone, atol=1e-5)
    np.testing.assert_allclose(batched[0], batched[2], atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def test_cancel_returns_the_finished_vectors(tiny):
    model, tok = tiny
    event = threading.Event()
    with pytest.raises(CancelledError) as info:
        embed(model, tok, [SHORT, LONG, SHORT], batch_size=1, cancel=event,
              progress=lambda done, total, rate: event.set())
    assert (info.value.done, info.value.total) == (1, 3)
    (index, vector), = info.value.partial.items()
    assert index == 1  # the longest text runs first
    np.testing.assert_allclose(vector, embed(model, tok, [LONG])[0], atol=1e-6)


def test_no_texts_give_an_empty_matrix(tiny):
    model, tok = tiny
    assert embed(model, tok, []).shape == (0, model.config.hidden_size)
