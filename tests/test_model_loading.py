"""load_model on tiny local checkpoints of both released architectures (CPU, no downloads)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from c2s_engine.errors import (
    DemoModelMissingError,
    InsufficientMemoryError,
    ModelCardError,
    ModelNotFoundError,
    UnsafeWeightsError,
    UnsupportedArchitectureError,
)
from c2s_engine.models import load_model
from c2s_engine.models import loading as loading_module
from c2s_engine.models import memory as memory_module

pytest_plugins = ["tiny_checkpoints"]
REPO = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


@pytest.fixture(params=["gpt_neox", "gemma2"])
def tiny_dir(request, tiny_gpt_neox_dir, tiny_gemma2_dir) -> Path:
    return tiny_gpt_neox_dir if request.param == "gpt_neox" else tiny_gemma2_dir


def _greedy_by_hand(model, input_ids: torch.Tensor, n_new: int) -> list[int]:
    """Greedy decoding written out: append the argmax of the last position's logits."""
    ids = input_ids
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(input_ids=ids).logits[0, -1]
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, input_ids.shape[1] :].tolist()


def test_greedy_generation_is_deterministic_and_matches_argmax(tiny_dir, tiny_prompt):
    first = load_model(str(tiny_dir), "fp32", "cpu")
    prompt = first.tokenizer(tiny_prompt, return_tensors="pt")
    assert prompt.input_ids[0, 0].item() == first.tokenizer.bos_token_id
    outputs = []
    for loaded in (first, load_model(str(tiny_dir), "fp32", "cpu")):
        out = loaded.model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        outputs.append(out[0, prompt.input_ids.shape[1] :].tolist())
    assert len(outputs[0]) == 8
    assert outputs[0] == outputs[1]
    # min_new_tokens masks <eos>, so the hand loop must too for the comparison to hold.
    eos = first.tokenizer.eos_token_id
    by_hand = _greedy_by_hand(first.model, prompt.input_ids, 8)
    if eos not in by_hand:
        assert outputs[0] == by_hand


def test_loaded_model_describes_itself(tiny_gpt_neox_dir):
    loaded = load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    h, layers, inter, vocab = 128, 2, 512, len(loaded.tokenizer)
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * inter + inter) + (inter * h + h) + 4 * h
    assert loaded.n_parameters == 2 * vocab * h + layers * per_layer + 2 * h
    assert loaded.n_parameters == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.name == "gpt_neox"
    assert (loaded.precision, loaded.device, loaded.dtype) == ("fp32", "cpu", torch.float32)
    assert loaded.memory_bytes == loaded.model.get_memory_footprint()
    assert loaded.card.architecture == "GPTNeoXForCausalLM"
    assert loaded.card.n_parameters == loaded.n_parameters
    assert not loaded.model.training
    assert any("no c2s.json model card" in notice for notice in loaded.notices)
    assert loaded.card.tasks == ()


def test_local_revision_is_sha256_of_safetensors(tmp_path, tiny_gpt_neox_dir, build_checkpoint):
    loaded = load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    digest = hashlib.sha256(b"model.safetensors")
    digest.update((tiny_gpt_neox_dir / "model.safetensors").read_bytes())
    assert loaded.revision == f"local:{digest.hexdigest()}"
    same = build_checkpoint(tmp_path / "same", "gpt_neox", seed=0)
    other = build_checkpoint(tmp_path / "other", "gpt_neox", seed=1)
    assert load_model(str(same), "fp32", "cpu").revision == loaded.revision
    assert load_model(str(other), "fp32", "cpu").revision != loaded.revision


@no_cuda
@pytest.mark.parametrize("precision", ["4bit", "8bit", "auto"])
def test_without_cuda_quantisation_falls_back_to_fp32_with_a_notice(tiny_gemma2_dir, precision):
    if precision == "auto":
        loaded = load_model(str(tiny_gemma2_dir), precision)
        assert loaded.notices == []
    else:
        with pytest.warns(UserWarning, match=f"{precision} quantisation needs an NVIDIA GPU"):
            loaded = load_model(str(tiny_gemma2_dir), precision)
        assert loaded.notices[0].startswith(f"{precision} quantisation needs an NVIDIA GPU")
        assert "loaded in fp32 on the CPU instead" in loaded.notices[0]
    assert (loaded.precision, loaded.device) == ("fp32", "cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_bf16_on_cpu_when_asked(tiny_gemma2_dir):
    loaded = load_model(str(tiny_gemma2_dir), "bf16", "cpu")
    assert loaded.precision == "bf16" and loaded.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("weights_name", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_folder_is_refused_before_loading(
    tmp_path, monkeypatch, weights_name, build_checkpoint
):
    folder = build_checkpoint(tmp_path / "pickled", "gpt_neox", safetensors=False)
    (folder / "pytorch_model.bin").rename(folder / weights_name)
    assert torch.load(folder / weights_name, weights_only=True)  # a real state dict

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called on a pickle-only folder")

    monkeypatch.setattr(loading_module.AutoModelForCausalLM, "from_pretrained", must_not_load)
    with pytest.raises(UnsafeWeightsError) as info:
        load_model(str(folder), "fp32", "cpu")
    message = str(info.value)
    assert f"only has pickled weights ({weights_name})" in message
    assert "save_pretrained(folder, safe_serialization=True)" in message
    assert "\n" not in message


def test_pickles_next_to_safetensors_are_ignored(tmp_path, tiny_gpt_neox_dir):
    folder = shutil.copytree(tiny_gpt_neox_dir, tmp_path / "with_rng_state")
    torch.save({"rng": torch.zeros(3)}, folder / "rng_state.pth")
    assert load_model(str(folder), "fp32", "cpu").precision == "fp32"


def test_folder_without_weights_or_config(tmp_path, tiny_gpt_neox_dir):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_gpt_neox_dir / "config.json", no_weights)
    with pytest.raises(ModelNotFoundError, match=r"holds no model weights \(no \*.safetensors"):
        load_model(str(no_weights), "fp32", "cpu")
    no_config = shutil.copytree(tiny_gpt_neox_dir, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(str(no_config), "fp32", "cpu")


def test_missing_path_and_file_paths(tmp_path, tiny_gpt_neox_dir):
    with pytest.raises(ModelNotFoundError, match="does not exist and is not a Hugging Face id"):
        load_model(str(tmp_path / "nowhere"), "fp32", "cpu")
    with pytest.raises(ModelNotFoundError, match="is a file, but a model is a folder"):
        load_model(str(tiny_gpt_neox_dir / "config.json"), "fp32", "cpu")


def test_unknown_architectures_are_refused(tmp_path):
    weights = {"w": torch.zeros(2)}
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file(weights, vit / "model.safetensors")
    with pytest.raises(UnsupportedArchitectureError, match="is a vit model, which is not a causal"):
        load_model(str(vit), "fp32", "cpu")
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "my_secret_llm"}))
    save_file(weights, custom / "model.safetensors")
    with pytest.raises(UnsupportedArchitectureError, match="architecture transformers cannot"):
        load_model(str(custom), "fp32", "cpu")


def test_demo_resolves_through_the_environment_variable(monkeypatch, tiny_gemma2_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(tiny_gemma2_dir))
    loaded = load_model("demo", "fp32", "cpu")
    assert loaded.name == "demo"
    assert loaded.card.tasks == ("cell_type_prediction", "spatial_*")
    assert loaded.revision.startswith("local:")


def test_demo_missing_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("C2S_DEMO_MODEL", raising=False)
    monkeypatch.setattr(loading_module, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(DemoModelMissingError) as info:
        load_model("demo")
    message = str(info.value)
    assert message.startswith("the demo model is not installed")
    assert str(tmp_path / "models" / "demo") in message
    assert "set C2S_DEMO_MODEL to such a folder" in message
    monkeypatch.setenv("C2S_DEMO_MODEL", str(tmp_path / "gone"))
    with pytest.raises(DemoModelMissingError, match=r"nothing at C2S_DEMO_MODEL=.*gone"):
        load_model("demo")


def test_bundled_models_load_by_name_and_are_offered_first(monkeypatch, tmp_path,
                                                             build_checkpoint):
    from c2s_engine.tasks.runtime import TaskNotSupportedError, check_task, models_supporting

    models = tmp_path / "models"
    card = {"name": "x", "architecture": "GPTNeoXForCausalLM", "n_parameters": 0,
            "tasks": ["perturbation_response"], "top_k": 6, "organisms": ["Homo sapiens"],
            "context_length": 256, "prompt_family": "c2s"}
    build_checkpoint(models / "perturb-demo", "gpt_neox", card=card)
    (models / "broken").mkdir()
    (models / "broken" / "c2s.json").write_text("{not json", encoding="utf-8")
    (models / "notes").mkdir()  # no card: not a model
    monkeypatch.setattr(loading_module, "MODELS_DIR", models)

    assert list(loading_module.bundled_models()) == ["perturb-demo"]
    loaded = load_model("perturb-demo", "fp32", "cpu")
    assert loaded.name == "perturb-demo" and loaded.card.supports("perturbation_response")
    # Shipped models load offline, so they come before released checkpoints.
    assert models_supporting("perturbation_response")[0] == "perturb-demo"
    assert models_supporting("cell_type_prediction")[0].startswith("vandijklab/")
    other = dataclasses.replace(loaded, card=dataclasses.replace(
        loaded.card, tasks=("cell_type_prediction",)))
    with pytest.raises(TaskNotSupportedError, match=r"use a model trained for it \(perturb-demo"):
        check_task(other, "perturbation_response")
    with pytest.raises(ModelNotFoundError, match="broken holds no model weights"):
        load_model("broken", "fp32", "cpu")  # found by name, so the error is about the folder
    with pytest.raises(ModelNotFoundError, match="does not exist and is not a Hugging Face id"):
        load_model("notes", "fp32", "cpu")


def test_c2s_json_card_wins_and_inherits_from_its_base(tiny_gemma2_dir):
    card = load_model(str(tiny_gemma2_dir), "fp32", "cpu").card
    assert card.name == "gemma2"  # the folder, not the released checkpoint it is based on
    assert (card.top_k, card.context_length) == (16, 256)  # from c2s.json
    assert card.license == "CC-BY-4.0"  # inherited from the registry base
    assert card.architecture == "Gemma2ForCausalLM"
    assert card.n_parameters < 1_000_000  # counted, not the base's 2.6B
    assert card.supports("spatial_niche_label_prediction")
    assert card.supports("cell_type_prediction")
    assert not card.supports("question_answering")


def test_invalid_card_is_a_clear_error(tmp_path, tiny_gpt_neox_dir):
    folder = shutil.copytree(tiny_gpt_neox_dir, tmp_path / "bad_card")
    (folder / "c2s.json").write_text(
        json.dumps({"base": "vandijklab/C2S-Scale-Gemma-2-2B", "tasks": ["celltype"]})
    )
    with pytest.raises(ModelCardError, match=r"lists unknown tasks \['celltype'\]"):
        load_model(str(folder), "fp32", "cpu")


def test_refuses_when_the_model_cannot_fit(monkeypatch, tiny_gpt_neox_dir):
    monkeypatch.setattr(memory_module, "available_memory", lambda device: 1000)
    with pytest.raises(InsufficientMemoryError) as info:
        load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    message = str(info.value)
    assert message.startswith("gpt_neox (413,440 parameters) needs ~0.0 GB in fp32 on cpu")
    assert "you have 0.0 GB free: no released model fits" in message
    assert message.endswith(
        "Fix: close programs that use this memory, or take one of the options named."
    )


def test_info_survives_h5ad_round_trip(tmp_path, tiny_gemma2_dir):
    loaded = load_model(str(tiny_gemma2_dir), "fp32", "cpu")
    info = loaded.info()
    assert info["dtype"] == "float32" and info["card"]["tasks"] == [
        "cell_type_prediction",
        "spatial_*",
    ]
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["c2s"] = {"model": info | {"notices": ["a notice"]}}
    adata.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad").uns["c2s"]["model"]
    assert back["revision"] == loaded.revision
    assert int(back["n_parameters"]) == loaded.n_parameters
    assert list(back["card"]["tasks"]) == ["cell_type_prediction", "spatial_*"]
    assert list(back["notices"]) == ["a notice"]


def _fake_hub_cache(cache: Path, repo_id: str, commit: str, source: Path) -> None:
    """Lay out ``source`` as huggingface_hub's cache does after a download of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_cache_offline_and_fail_clearly_when_absent(
    tmp_path, tiny_gpt_neox_dir
):
    """Hub path (AutoModelForCausalLM.from_pretrained(id)) in a subprocess: the offline switch
    is read when huggingface_hub is imported."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cached_id = "vandijklab/C2S-Pythia-410m-cell-type-prediction"
    _fake_hub_cache(tmp_path / "hub", cached_id, commit, tiny_gpt_neox_dir)
    script = textwrap.dedent(f"""
        import json
        from c2s_engine.errors import ModelNotFoundError
        from c2s_engine.models import load_model
        loaded = load_model({cached_id!r}, "fp32", "cpu")
        try:
            load_model("vandijklab/C2S-Scale-Gemma-2-2B", "fp32", "cpu")
            error = ""
        except ModelNotFoundError as exc:
            error = str(exc)
        print(json.dumps({{"name": loaded.name, "revision": loaded.revision,
                          "tasks": list(loaded.card.tasks), "error": error}}))
    """)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == cached_id
    assert result["revision"] == commit
    assert result["tasks"] == ["cell_type_prediction", "embedding"]  # registry card
    assert result["error"].startswith(
        "vandijklab/C2S-Scale-Gemma-2-2B is not in the local Hugging Face cache and offline "
        "mode is on (HF_HUB_OFFLINE=1)."
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for bitsandbytes")
def test_4bit_on_cuda_quantises_linear_layers(tiny_gemma2_dir, tiny_prompt):
    import bitsandbytes as bnb

    loaded = load_model(str(tiny_gemma2_dir), "4bit", "cuda")
    assert (loaded.precision, loaded.notices) == ("4bit", [])
    assert loaded.device.startswith("cuda")
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert layers[0].weight.quant_state.quant_type == "nf4"
    assert layers[0].weight.quant_state.nested  # double quantisation
    assert type(loaded.model.lm_head) is torch.nn.Linear
    assert loaded.model.model.embed_tokens.weight.dtype == torch.bfloat16
    prompt = loaded.tokenizer(tiny_prompt, return_tensors="pt").to("cuda")
    runs = [
        loaded.model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1]) and runs[0].shape[1] == prompt.input_ids.shape[1] + 8
