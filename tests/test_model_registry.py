"""Registry of released checkpoints and model cards (c2s.json)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from c2s_engine.errors import ModelCardError, ModelNotFoundError
from c2s_engine.models import TASKS, ModelCard, estimate_memory, get_card, list_models
from c2s_engine.models.registry import read_card_file, registry_config

RELEASED = {
    "vandijklab/C2S-Scale-Gemma-2-2B": "Gemma2ForCausalLM",
    "vandijklab/C2S-Scale-Gemma-2-27B": "Gemma2ForCausalLM",
    "vandijklab/C2S-Scale-Pythia-1b-pt": "GPTNeoXForCausalLM",
    "vandijklab/C2S-Pythia-410m-cell-type-prediction": "GPTNeoXForCausalLM",
    "vandijklab/C2S-Pythia-410m-cell-type-conditioned-cell-generation": "GPTNeoXForCausalLM",
    "vandijklab/C2S-Pythia-410m-diverse-single-and-multi-cell-tasks": "GPTNeoXForCausalLM",
}


def test_list_models_holds_every_released_checkpoint_smallest_first():
    cards = list_models()
    assert {card.name: card.architecture for card in cards} == RELEASED
    sizes = [card.n_parameters for card in cards]
    assert sizes == sorted(sizes)
    assert cards[-1].name == "vandijklab/C2S-Scale-Gemma-2-27B"


def test_registered_parameter_counts_match_the_registered_configs():
    for card in list_models():
        config = registry_config(card.name)
        assert config.architectures == [card.architecture]
        assert config.max_position_embeddings == card.context_length
        est = estimate_memory(card.name, "bf16", 1, 16, device="cpu", available_bytes=0)
        assert est.n_parameters == card.n_parameters, card.name


def test_known_facts_of_the_released_checkpoints():
    gemma = get_card("vandijklab/C2S-Scale-Gemma-2-27B")
    assert (gemma.context_length, gemma.license) == (8192, "CC-BY-4.0")
    assert registry_config(gemma.name).model_type == "gemma2"
    cell_type = get_card("vandijklab/C2S-Pythia-410m-cell-type-prediction")
    assert (cell_type.top_k, cell_type.context_length) == (200, 2048)
    assert registry_config(cell_type.name).model_type == "gpt_neox"
    for card in list_models():
        assert card.organisms == ("Homo sapiens", "Mus musculus")
        assert all(card.supports(task) for task in card.tasks)


def test_supports():
    cell_type = get_card("vandijklab/C2S-Pythia-410m-cell-type-prediction")
    assert cell_type.supports("cell_type_prediction")
    assert not cell_type.supports("cell_type_generation")
    generation = get_card("vandijklab/C2S-Pythia-410m-cell-type-conditioned-cell-generation")
    assert generation.supports("cell_type_generation") and not generation.supports("embedding")
    gemma = get_card("vandijklab/C2S-Scale-Gemma-2-2B")
    assert gemma.supports("question_answering") and gemma.supports("cluster_captioning")
    assert not gemma.supports("spatial_niche_label_prediction")
    spatial = ModelCard.from_dict({"tasks": ["spatial_*"]}, defaults=gemma)
    assert spatial.supports("spatial_niche_label_prediction")
    assert not spatial.supports("cell_type_prediction")


def test_recommended_decoding_comes_from_the_training_record():
    gemma = get_card("vandijklab/C2S-Scale-Gemma-2-2B")
    assert gemma.decoding("perturbation_response") == {}  # released cards recommend nothing
    tuned = {"temperature": 0.6, "contrast_weight": 1.0}
    card = ModelCard.from_dict({"training": {"decoding": {"perturbation_response": tuned}}},
                               defaults=gemma)
    assert card.decoding("perturbation_response") == tuned
    assert card.decoding("cell_type_generation") == {}
    card.decoding("perturbation_response")["temperature"] = 2.0  # a copy, not the card's own
    assert card.decoding("perturbation_response") == tuned
    # The shipped kang model recommends the decoding chosen on its validation cell type.
    shipped = Path(__file__).resolve().parents[1] / "assets/models/kang-perturbation/c2s.json"
    kang_card = read_card_file(shipped)
    kang = kang_card.decoding("perturbation_response")
    # ... and names the perturbation the way it was trained (the page offers that name).
    assert kang_card.training["perturbation_names"] == {"stimulated": "IFN-beta"}
    assert kang["do_sample"] is True and kang["contrast_weight"] > 0
    assert 0 < kang["temperature"] <= 1


def test_unknown_names():
    assert get_card("vandijklab/not-a-model") is None
    with pytest.raises(ModelNotFoundError, match='"nope/model" is not a registered C2S checkpoint'):
        registry_config("nope/model")


def test_card_validation_messages():
    base = get_card("vandijklab/C2S-Scale-Gemma-2-2B")
    with pytest.raises(ModelCardError, match=r"card has unknown keys \['top_genes'\]"):
        ModelCard.from_dict({"top_genes": 100}, defaults=base)
    with pytest.raises(ModelCardError, match=r"lists unknown tasks \['annotate'\].*Fix: use task"):
        ModelCard.from_dict({"tasks": ["annotate"]}, defaults=base)
    with pytest.raises(ModelCardError, match=r'"top_k" must be an integer'):
        ModelCard.from_dict({"top_k": "200"}, defaults=base)
    with pytest.raises(ModelCardError, match=r"lacks the fields \['architecture', "):
        ModelCard.from_dict({"name": "x", "tasks": []})
    assert ModelCard.from_dict({"organisms": "Mus musculus"}, base).organisms == ("Mus musculus",)


def test_read_card_file_inherits_from_base_and_keeps_the_local_name(tmp_path):
    path = tmp_path / "c2s.json"
    path.write_text(
        json.dumps({"base": "vandijklab/C2S-Pythia-410m-cell-type-prediction", "top_k": 100})
    )
    defaults = ModelCard("my-finetune", "GPTNeoXForCausalLM", 0, (), 200, (), 2048, "c2s")
    card = read_card_file(path, defaults)
    assert card.name == "my-finetune"
    assert card.top_k == 100
    assert card.tasks == ("cell_type_prediction", "embedding")
    assert card.license == "CC-BY-NC-ND-4.0"


def test_read_card_file_errors(tmp_path):
    path = tmp_path / "c2s.json"
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match=r"c2s.json cannot be read .*Fix: fix the JSON"):
        read_card_file(path)
    path.write_text('["a list"]')
    with pytest.raises(ModelCardError, match="is not a JSON object"):
        read_card_file(path)
    path.write_text('{"base": "someone/else"}')
    with pytest.raises(ModelCardError, match=r'names an unknown base "someone/else"'):
        read_card_file(path)


def test_registry_tasks_are_known_task_ids():
    assert "spatial_*" in TASKS
    for card in list_models():
        assert set(card.tasks) <= set(TASKS)


def test_card_survives_json_and_h5ad_round_trips(tmp_path):
    card = get_card("vandijklab/C2S-Scale-Gemma-2-2B")
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    adata = ad.AnnData(np.zeros((1, 1), dtype=np.float32))
    adata.uns["c2s"] = {"model_card": card.to_dict()}
    adata.write_h5ad(tmp_path / "c.h5ad")
    back = ad.read_h5ad(tmp_path / "c.h5ad").uns["c2s"]["model_card"]
    restored = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in back.items()}
    restored = {k: int(v) if isinstance(v, np.integer) else v for k, v in restored.items()}
    assert ModelCard.from_dict(restored) == card
