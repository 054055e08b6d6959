"""Batched generation: same tokens as one-prompt generate, order, stops, sampling, parsing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2s_engine.inference import cut_at_stop, generate

pytest_plugins = ["tiny_checkpoints"]

# Prompts of different token lengths, deliberately not sorted by length.
PROMPTS = [
    "CD3E CD3D IL7R",
    "MALAT1 B2M TMSB4X EEF1A1 RPL13 RPS27 CD74 HLA-DRA LYZ S100A9 Cell sentence :",
    "LYZ",
    "The cell type corresponding to these genes is :",
    "NKG7 GNLY FCGR3A CST3 FTL",
]


def load(path, arch):
    extra = {"attn_implementation": "eager"} if arch == "gemma2" else {}
    return (AutoModelForCausalLM.from_pretrained(path, **extra).eval(),
            AutoTokenizer.from_pretrained(path))


@pytest.fixture(params=["gpt_neox", "gemma2"])
def tiny(request, tiny_gpt_neox_dir, tiny_gemma2_dir):
    path = tiny_gpt_neox_dir if request.param == "gpt_neox" else tiny_gemma2_dir
    return load(path, request.param)


# The scripted model's next token depends only on the current token.
SUCCESSOR = {":": "NK", "NK": "cell", "cell": ".", ".": "monocyte", "monocyte": "<eos>",
             "B": "T", "T": "B"}


@pytest.fixture
def scripted(tiny_gpt_neox_dir):
    """The tiny GPT-NeoX rewired so that generation follows SUCCESSOR exactly.

    Zeroing every block's output projections makes each block the identity, so the final
    hidden state is the normalised embedding of the current token; each successor's
    output row is set to that vector, giving it by far the highest logit.
    """
    model, tok = load(tiny_gpt_neox_dir, "gpt_neox")
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            for proj in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                proj.weight.zero_()
                proj.bias.zero_()
        head = model.get_output_embeddings().weight
        head.zero_()
        for src, dst in SUCCESSOR.items():
            src_id, dst_id = tok.convert_tokens_to_ids([src, dst])
            hidden = model.gpt_neox.final_layer_norm(model.get_input_embeddings().weight[src_id])
            head[dst_id] = hidden / hidden.norm() * 10
    return model, tok


def test_greedy_batches_give_the_tokens_of_one_prompt_generate(tiny):
    model, tok = tiny
    result = generate(model, tok, PROMPTS, max_new_tokens=6, stop=None, batch_size=2)
    for i, prompt in enumerate(PROMPTS):
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        assert result.completions[i] == tok.decode(new, skip_special_tokens=True)
        assert result.n_new_tokens[i] == len(new)
    assert result.batch_size == 2
    assert result.cells_per_s > 0 and result.seconds > 0


def test_input_order_is_kept_whatever_the_bucketing(tiny):
    model, tok = tiny
    forward = generate(model, tok, PROMPTS, max_new_tokens=4, stop=None, batch_size=2)
    backward = generate(model, tok, PROMPTS[::-1], max_new_tokens=4, stop=None, batch_size=3)
    singles = [generate(model, tok, [p], max_new_tokens=4, stop=None).completions[0]
               for p in PROMPTS]
    assert forward.completions == singles
    assert backward.completions == singles[::-1]


def test_each_sequence_stops_at_its_own_stop_or_eos(scripted):
    model, tok = scripted
    prompts = ["CD3E . The cell type is :", "LYZ monocyte", "CD74 B"]
    result = generate(model, tok, prompts, max_new_tokens=7, stop=(".",), batch_size=3)
    # The '.' inside the first prompt must not stop anything: only new text counts.
    assert result.answers == ["NK cell", "", "T B T B T B T"]
    assert result.completions == ["NK cell .", "", "T B T B T B T"]
    # Stop token and EOS count as generated; padding after a finished row does not.
    assert result.n_new_tokens == [3, 1, 7]


def test_without_stop_strings_generation_runs_to_eos(scripted):
    model, tok = scripted
    result = generate(model, tok, ["LYZ :"], max_new_tokens=20, stop=None)
    assert result.completions == ["NK cell . monocyte"]
    assert result.answers == ["NK cell . monocyte"]
    assert result.n_new_tokens == [5]
    multi = generate(model, tok, ["LYZ :"], max_new_tokens=20, stop=("monocyte", "cell"))
    assert multi.answers == ["NK"]  # the earliest stop string wins


def test_answer_comes_from_new_tokens_not_from_removing_the_prompt(scripted):
    model, tok = scripted
    # Double spaces, a tab and an unknown word: decoding the prompt's tokens does not give
    # the prompt back, so removing the prompt string from the decoded text would fail.
    prompt = "CD3E  CD3D\tXYZZY LYZ :"
    decoded_prompt = tok.decode(tok(prompt)["input_ids"], skip_special_tokens=True)
    assert decoded_prompt != prompt
    result = generate(model, tok, [prompt], max_new_tokens=5)
    assert result.answers == ["NK cell"]
    assert result.completions == ["NK cell ."]


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, tok = tiny
    kwargs = {"max_new_tokens": 12, "stop": None, "do_sample": True, "temperature": 2.0,
              "batch_size": 2}
    first = generate(model, tok, PROMPTS, seed=1, **kwargs)
    again = generate(model, tok, PROMPTS, seed=1, **kwargs)
    other = generate(model, tok, PROMPTS, seed=2, **kwargs)
    greedy = generate(model, tok, PROMPTS, max_new_tokens=12, stop=None)
    assert first.completions == again.completions
    assert first.completions != other.completions
    assert first.completions != greedy.completions


def test_a_tokenizer_without_pad_token_gets_eos(tiny):
    model, tok = tiny
    expected = generate(model, tok, PROMPTS, max_new_tokens=3, stop=None).completions
    tok.pad_token = None
    assert tok.pad_token_id is None
    assert generate(model, tok, PROMPTS, max_new_tokens=3, stop=None,
                    batch_size=5).completions == expected
    assert tok.pad_token == tok.eos_token


def test_a_loaded_model_brings_its_tokenizer(tiny):
    model, tok = tiny

    class Loaded:  # the shape of c2s_engine.models.LoadedModel that generate relies on
        def __init__(self):
            self.model, self.tokenizer = model, tok

    assert generate(Loaded(), None, PROMPTS[:2], max_new_tokens=3).answers == \
        generate(model, tok, PROMPTS[:2], max_new_tokens=3).answers


@pytest.mark.parametrize(("text", "stop", "expected"), [
    (" NK cell. monocyte\n", (".", "\n"), "NK cell"),
    (" AL627309.1 CD3E.\nB", (". ", ".\n"), "AL627309.1 CD3E"),
    ("one\ntwo.", (".", "\n"), "one"),
    ("  no stop here ", (".",), "no stop here"),
    (" kept whole. ", None, "kept whole."),
])
def test_cut_at_stop(text, stop, expected):
    assert cut_at_stop(text, stop) == expected


def test_no_prompts_give_an_empty_result(tiny):
    model, tok = tiny
    result = generate(model, tok, [], max_new_tokens=3)
    assert (result.answers, result.completions, result.n_new_tokens) == ([], [], [])


def test_no_repeat_guard_breaks_a_loop_but_lets_the_answer_quote_its_prompt(scripted):
    model, tok = scripted
    looping = generate(model, tok, ["CD74 T B"], max_new_tokens=6, stop=None)
    assert looping.completions == ["T B T B T B"]
    guarded = generate(model, tok, ["CD74 T B"], max_new_tokens=6, stop=None,
                       no_repeat_ngram_size=2)
    words = guarded.completions[0].split()
    # "T B" is already in the prompt and may still be written once; the loop stops there.
    assert words[:3] == ["T", "B", "T"]
    assert words[3] != "B"
    bigrams = list(zip(words, words[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))
    # transformers' own no_repeat_ngram_size counts the prompt's "T B" and bans it at once.
    enc = tok("CD74 T B", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False, no_repeat_ngram_size=2,
                         pad_token_id=tok.pad_token_id)
    hf_words = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split()
    assert hf_words[0] == "T" and hf_words[1] != "B"


def test_unique_words_guard_lets_an_answer_name_a_word_once(scripted):
    model, tok = scripted
    looping = generate(model, tok, ["CD74 T B"], max_new_tokens=6, stop=None)
    assert looping.completions == ["T B T B T B"]
    guarded = generate(model, tok, ["CD74 T B"], max_new_tokens=6, stop=None, unique_words=True)
    words = guarded.completions[0].split()
    # The prompt's "T" and "B" do not count: the answer names each once, then moves on.
    assert words[:2] == ["T", "B"] and len(words) > 2
    assert len(words) == len(set(words))
    # Sampled answers keep to it too.
    sampled = generate(model, tok, ["CD74 T B"] * 4, max_new_tokens=8, stop=None,
                       unique_words=True, do_sample=True, temperature=3.0, seed=0)
    for completion in sampled.completions:
        words = completion.split()
        assert words and len(words) == len(set(words))


def test_whole_word_ids_only_for_tokenizers_that_keep_words_whole():
    from tiny_models import train_tiny_tokenizer

    from c2s_engine.inference.generation import whole_word_ids
    from c2s_engine.training.tokenizer import train_tokenizer

    genes = ["CD3E", "CD3D", "IL7R", "LYZ", "S100A9", "HLA-DRA", "RP11-34P13.7"]
    word_level = train_tiny_tokenizer([" ".join(genes), "Cell type : T cell ."])
    ids = whole_word_ids(word_level)
    tokens = set(word_level.convert_ids_to_tokens(ids))
    assert set(genes) <= tokens and ":" not in tokens and "." not in tokens
    assert not set(ids) & set(word_level.all_special_ids)
    # WordPiece (the demo models'): whole genes yes, word-inner "##" pieces no.
    piece = train_tokenizer([" ".join(genes) + ".", "An unseen word: interferon."] * 3,
                            gene_symbols=genes)
    tokens = set(piece.convert_ids_to_tokens(whole_word_ids(piece)))
    assert set(genes) <= tokens
    assert not any(t.startswith("##") for t in tokens)
    assert any(t.startswith("##") for t in piece.get_vocab())
    # Byte-pair tokenizers split genes into pieces that other genes share: no guard.
    assert whole_word_ids(train_tiny_tokenizer([" ".join(genes)], model="bpe")) is None


def _last_log_probs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_contrastive_guidance_is_own_plus_weight_times_own_minus_other(tiny):
    """c + w (c - n) at every step, for left-padded rows, from the processor's own KV cache."""
    from c2s_engine.inference.batching import pad_batch
    from c2s_engine.inference.generation import ContrastivePromptGuidance

    model, tok = tiny
    tok.pad_token = tok.pad_token or tok.eos_token
    own_ids = tok([PROMPTS[0], PROMPTS[2]])["input_ids"]
    other_ids = tok([PROMPTS[4], PROMPTS[1]])["input_ids"]
    own = pad_batch(tok, own_ids, "left", model.device)
    other = pad_batch(tok, other_ids, "left", model.device)
    guide = ContrastivePromptGuidance(model, other, own["input_ids"].shape[1], weight=0.75)
    continuation = tok(" CD74 B2M", add_special_tokens=False)["input_ids"]
    ids = own["input_ids"]
    for step in range(len(continuation) + 1):
        if step:
            ids = torch.cat([ids, torch.tensor([[continuation[step - 1]]] * 2)], dim=1)
        new = continuation[:step]
        scores = torch.stack([_last_log_probs(model, x + new) for x in own_ids])
        got = guide(ids, scores.clone())
        for row in range(2):
            c, n = scores[row], _last_log_probs(model, other_ids[row] + new)
            torch.testing.assert_close(got[row], c + 0.75 * (c - n), atol=2e-4, rtol=1e-4)


def test_contrastive_guidance_keeps_forbidden_tokens_forbidden_and_weight_0_changes_nothing(tiny):
    from c2s_engine.inference.batching import pad_batch
    from c2s_engine.inference.generation import ContrastivePromptGuidance

    model, tok = tiny
    other = pad_batch(tok, tok([PROMPTS[4]])["input_ids"], "left", model.device)
    ids = tok([PROMPTS[0]], return_tensors="pt")["input_ids"]
    scores = torch.log_softmax(torch.randn(1, model.config.vocab_size), dim=-1)
    scores[0, 5] = -float("inf")
    got = ContrastivePromptGuidance(model, other, ids.shape[1], weight=2.0)(ids, scores.clone())
    assert torch.isneginf(got[0, 5]) and not torch.isnan(got).any()
    unguided = ContrastivePromptGuidance(model, other, ids.shape[1], weight=0.0)(ids, scores.clone())
    # The same distribution (log-probabilities are renormalised once a token is forbidden).
    torch.testing.assert_close(unguided, torch.log_softmax(scores, dim=-1))
    # Through generate: weight 0 (or no contrasting prompts) gives the plain answers.
    plain = generate(model, tok, PROMPTS, max_new_tokens=4, stop=None)
    weight0 = generate(model, tok, PROMPTS, max_new_tokens=4, stop=None,
                       contrast_prompts=PROMPTS[::-1], contrast_weight=0.0)
    assert weight0.completions == plain.completions
    with pytest.raises(ValueError, match="2 contrasting prompts for 5 prompts"):
        generate(model, tok, PROMPTS, max_new_tokens=2, contrast_prompts=PROMPTS[:2],
                 contrast_weight=1.0)


def test_contrastive_guidance_changes_greedy_answers_as_computed(tiny):
    from itertools import permutations

    model, tok = tiny
    # A pair of prompts where the contrast decides the next token.
    for own, other in permutations(PROMPTS, 2):
        c = _last_log_probs(model, tok(own)["input_ids"])
        n = _last_log_probs(model, tok(other)["input_ids"])
        guided = int(torch.argmax(c + 8.0 * (c - n)))
        if guided != int(torch.argmax(c)):
            break
    else:
        pytest.fail("the contrast decided no next token")
    plain = generate(model, tok, [own], max_new_tokens=1, stop=None)
    out = generate(model, tok, [own], max_new_tokens=1, stop=None, contrast_prompts=[other],
                   contrast_weight=8.0)
    assert plain.completions[0] == tok.decode([int(torch.argmax(c))], skip_special_tokens=True)
    assert out.completions[0] == tok.decode([guided], skip_special_tokens=True)
    assert out.completions != plain.completions
