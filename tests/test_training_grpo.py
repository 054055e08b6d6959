"""Tiny end-to-end GRPO runs (CPU, a few steps): finite rewards and loss, a loadable model."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from c2s_engine.errors import C2SError
from c2s_engine.models import load_model
from c2s_engine.training.grpo import PRESETS, GRPORunConfig, build_rewards, run_grpo
from c2s_engine.training.records import RECORD_FILENAME, RunRecord

pytest_plugins = ["tiny_checkpoints"]


@pytest.fixture(scope="module")
def prompts(tiny_prompt):
    genes = tiny_prompt.split()
    rows = []
    for i in range(4):
        order = genes[i:] + genes[:i]
        rows.append({"prompt": f"Cell sentence : {' '.join(order)} . Generate a list of genes :",
                     "completion": " " + " ".join(reversed(order)) + " .",
                     "task": "cell_type_generation", "label": "",
                     "reference_sentence": " ".join(reversed(order)), "reference_text": "",
                     "cell_ids": [f"c{i}"]})
    return Dataset.from_list(rows)


def test_presets_are_the_papers():
    assert PRESETS["qa"] == {"num_generations": 32, "beta": 0.03, "learning_rate": 5e-7}
    assert PRESETS["l1000"] == {"num_generations": 24, "beta": 5e-3, "learning_rate": 1e-6}
    resolved = GRPORunConfig(preset="l1000", beta=0.1).resolved()
    assert (resolved.num_generations, resolved.beta, resolved.learning_rate) == (24, 0.1, 1e-6)
    assert resolved.per_device_train_batch_size == 24  # one group per device and step
    with pytest.raises(C2SError, match="unknown GRPO preset 'ppo'"):
        GRPORunConfig(preset="ppo").resolved()


def test_grpo_run_gives_finite_rewards_and_a_loadable_model(tmp_path, tiny_gpt_neox_dir,
                                                            prompts, tiny_prompt):
    config = GRPORunConfig(
        model=str(tiny_gpt_neox_dir), output_dir=str(tmp_path / "grpo"), num_generations=4,
        max_steps=2, max_completion_length=8, logging_steps=1, learning_rate=1e-4,
        rewards=["kendall_tau", "label_match"], gene_program=tiny_prompt.split(), top_k=6)
    result = run_grpo(prompts, config)
    metrics = result.metrics
    assert metrics["steps"] == 2 and len(metrics["rewards"]) == 2
    assert all(math.isfinite(x) for x in [*metrics["rewards"], *metrics["losses"]])
    assert -1.0 <= metrics["final_reward"] <= 1.0  # a Kendall tau; label_match has no label
    # label_match had no label to check (None for every example), so only tau is reported.
    assert set(metrics["final_reward_by_function"]) == {"kendall_tau_reward"}
    assert metrics["final_reward_by_function"]["kendall_tau_reward"] == \
        pytest.approx(metrics["final_reward"])

    loaded = load_model(str(result.output_dir))
    assert loaded.card.architecture == "GPTNeoXForCausalLM"
    assert loaded.card.tasks == ("cell_type_generation",) and loaded.card.top_k == 6
    record = RunRecord.load(result.output_dir / RECORD_FILENAME)
    assert record.kind == "grpo"
    assert record.config["train"]["num_generations"] == 4
    assert record.config["train"]["beta"] == 0.03  # from the qa preset
    assert record.metrics["final_reward"] == pytest.approx(metrics["final_reward"])


def test_reward_settings_are_checked_before_training(tmp_path, prompts):
    with pytest.raises(C2SError, match="kendall_tau reward needs a gene program"):
        build_rewards(GRPORunConfig(rewards=["kendall_tau"]), None)
    with pytest.raises(C2SError, match="embedding_mse reward needs the real cells"):
        build_rewards(GRPORunConfig(rewards=["embedding_mse"]), None)
    with pytest.raises(C2SError, match=r"unknown or no GRPO rewards \['fun'\]"):
        build_rewards(GRPORunConfig(rewards=["fun"]), None)
    with pytest.raises(C2SError, match="not a multiple of the group"):
        run_grpo(prompts, GRPORunConfig(output_dir=str(tmp_path / "g"), num_generations=4,
                                        per_device_train_batch_size=6))
