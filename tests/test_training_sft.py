"""Tiny end-to-end SFT runs (CPU, a few steps): finite losses, a loadable model, honest errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset

from c2s_engine.errors import C2SError, DeviceUnavailableError, ModelCardError
from c2s_engine.models import load_model
from c2s_engine.training.records import RECORD_FILENAME, RunRecord
from c2s_engine.training.sft import LORA_TARGET_MODULES, SFTRunConfig, lora_config, run_sft

pytest_plugins = ["tiny_checkpoints"]


@pytest.fixture(scope="module")
def examples(tiny_prompt):
    genes = tiny_prompt.split()
    rows = [{"prompt": f"Cell sentence : {' '.join(genes[i:] + genes[:i])} . The cell type "
                       "corresponding to these genes is :",
             "completion": " B ." if i % 2 else " T .", "task": "cell_type_prediction",
             "cell_ids": [f"c{i}"]} for i in range(6)]
    return Dataset.from_list(rows)


def _tiny(tmp_path, base, **overrides) -> SFTRunConfig:
    values = {"model": str(base), "output_dir": str(tmp_path / "sft"), "max_steps": 3,
              "per_device_train_batch_size": 3, "logging_steps": 1, "learning_rate": 1e-3,
              "top_k": 6}
    return SFTRunConfig(**{**values, **overrides})


def test_paper_defaults():
    config = SFTRunConfig()
    assert (config.learning_rate, config.weight_decay, config.mode) == (1e-5, 0.01, "full")


def test_full_sft_trains_and_saves_a_loadable_model(tmp_path, tiny_gpt_neox_dir, examples):
    result = run_sft(examples, _tiny(tmp_path, tiny_gpt_neox_dir), eval_dataset=examples)
    metrics = result.metrics
    assert metrics["steps"] == 3 and len(metrics["losses"]) == 3
    assert all(math.isfinite(x) for x in [*metrics["losses"], metrics["eval_loss"]])
    assert metrics["losses"][-1] < metrics["losses"][0]  # lr 1e-3 on 6 examples must learn

    loaded = load_model(str(result.output_dir))
    assert loaded.notices == []  # a c2s.json card was written
    assert loaded.card.architecture == "GPTNeoXForCausalLM"
    assert loaded.card.tasks == ("cell_type_prediction",)
    assert loaded.card.top_k == 6 and loaded.card.name == "sft"
    before = load_model(str(tiny_gpt_neox_dir)).model.state_dict()
    after = loaded.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    record = RunRecord.load(result.output_dir / RECORD_FILENAME)
    assert record.kind == "sft" and record.seed == 0
    assert record.config["train"]["mode"] == "full"
    assert record.metrics["final_loss"] == pytest.approx(metrics["final_loss"])
    assert record.versions["trl"] and record.finished >= record.started


def test_lora_sft_merges_adapters_into_a_plain_checkpoint(tmp_path, tiny_gpt_neox_dir, examples):
    result = run_sft(examples, _tiny(tmp_path, tiny_gpt_neox_dir, mode="lora", max_steps=2))
    assert all(math.isfinite(x) for x in result.metrics["losses"])
    adapter = json.loads((result.output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["query_key_value"]
    loaded = load_model(str(result.output_dir))
    # Merged: plain GPT-NeoX weights, no LoRA parameters left.
    assert not any("lora" in name for name in loaded.model.state_dict())
    assert loaded.card.architecture == "GPTNeoXForCausalLM"


def test_lora_targets_per_architecture():
    config = SFTRunConfig()
    assert set(lora_config("gpt_neox", config).target_modules) == {"query_key_value"}
    assert set(lora_config("gemma2", config).target_modules) == {"q_proj", "k_proj", "v_proj",
                                                                 "o_proj"}
    assert LORA_TARGET_MODULES["gemma2"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(C2SError, match="no default LoRA target modules for the 'mamba'"):
        lora_config("mamba", config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_without_cuda_is_a_clear_error(tmp_path, tiny_gpt_neox_dir, examples):
    with pytest.raises(DeviceUnavailableError) as err:
        run_sft(examples, _tiny(tmp_path, tiny_gpt_neox_dir, mode="qlora"))
    assert "QLoRA" in str(err.value) and "mode: lora" in str(err.value)


def test_bad_inputs_fail_before_training(tmp_path, tiny_gpt_neox_dir, examples):
    with pytest.raises(C2SError, match="unknown training mode 'half'"):
        run_sft(examples, _tiny(tmp_path, tiny_gpt_neox_dir, mode="half"))
    with pytest.raises(C2SError, match=r"lacks the column\(s\) \['completion'\]"):
        run_sft(examples.remove_columns("completion"), _tiny(tmp_path, tiny_gpt_neox_dir))
    with pytest.raises(ModelCardError, match="unknown tasks"):
        run_sft(examples, _tiny(tmp_path, tiny_gpt_neox_dir, tasks=["astrology"]))
    assert not (tmp_path / "sft").exists()
