"""``c2s train sft --config`` and ``c2s evaluate`` end to end on a tiny model and real cells."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import yaml

from c2s_engine.commands import train as train_commands
from c2s_engine.errors import C2SError, MissingFileError
from c2s_engine.models import load_model
from c2s_engine.training.records import RECORD_FILENAME, RunRecord, sha256_path

pytest_plugins = ["tiny_checkpoints"]


def run(argv: list[str]) -> int:
    """Parse and run ``argv`` as the ``c2s`` entry point does once ``register`` is wired."""
    parser = argparse.ArgumentParser(prog="c2s")
    train_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory, pbmc68k):
    path = tmp_path_factory.mktemp("data") / "pbmc_small.h5ad"
    pbmc68k[:120].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pbmc_file, tiny_gpt_neox_dir):
    folder = tmp_path_factory.mktemp("run")
    config = {
        "seed": 3,
        "data": {"inputs": [str(pbmc_file)], "label_key": "bulk_labels", "top_k": 6,
                 "tasks": ["cell_type_prediction", "cell_type_generation"],
                 "split": {"by": "cell", "test_fraction": 0.25}},
        "train": {"model": str(tiny_gpt_neox_dir), "output_dir": str(folder / "model"),
                  "max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert run(["train", "sft", "--config", str(path)]) == 0
    return folder / "model"


def test_train_sft_from_a_yaml_config(trained, pbmc_file, capsys):
    loaded = load_model(str(trained))
    assert loaded.card.tasks == ("cell_type_generation", "cell_type_prediction")
    assert loaded.card.top_k == 6  # the data's sentence length
    record = RunRecord.load(trained / RECORD_FILENAME)
    assert record.kind == "sft" and record.seed == 3
    assert record.data == [{"path": str(pbmc_file), "sha256": sha256_path(pbmc_file),
                            "bytes": pbmc_file.stat().st_size}]
    assert record.config["data"]["label_key"] == "bulk_labels"
    assert record.config["train"]["seed"] == 3 and record.config["train"]["max_steps"] == 2
    held_out = record.split["test_cells"]["pbmc_small"]
    assert record.split["method"] == "cell" and 20 <= len(held_out) <= 40
    assert all(math.isfinite(x) for x in record.metrics["losses"])
    assert math.isfinite(record.metrics["eval_loss"])


def test_evaluate_annotation_on_the_held_out_cells(trained, pbmc_file, tmp_path):
    out = tmp_path / "eval.json"
    assert run(["evaluate", "--model", str(trained), "--data", str(pbmc_file),
                "--task", "annotate", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]["held_out"]["annotate"]
    training = RunRecord.load(trained / RECORD_FILENAME)
    n_held_out = len(training.split["test_cells"]["pbmc_small"])
    assert result["config"]["cells"] == "held-out"
    assert metrics["n_cells"] == result["config"]["n_cells"] == n_held_out
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert metrics["label_key"] == "bulk_labels"
    # Candidates are every label of the file, not only those of the held-out cells.
    import anndata

    assert metrics["n_candidates"] == anndata.read_h5ad(pbmc_file).obs["bulk_labels"].nunique()
    # The model's own record now carries the held-out metrics.
    assert training.metrics["held_out"]["annotate"]["accuracy"] == metrics["accuracy"]
    # Per-cell predictions back the accuracy, and the paired tests count the same cells.
    truth = anndata.read_h5ad(pbmc_file).obs["bulk_labels"].astype(str)
    assert sorted(metrics["predicted"]) == sorted(training.split["test_cells"]["pbmc_small"])
    right = {c: metrics["predicted"][c].casefold() == truth[c].casefold()
             for c in metrics["predicted"]}
    assert metrics["accuracy"] == pytest.approx(sum(right.values()) / len(right))
    for name, baseline in metrics["baselines"].items():
        test = metrics["paired_tests"][name]
        baseline_right = {c: label == truth[c] for c, label in baseline["predicted"].items()}
        assert test["first_only"] == sum(right[c] and not b for c, b in baseline_right.items())
        assert test["second_only"] == sum(b and not right[c] for c, b in baseline_right.items())
        assert test["n_cells"] == n_held_out and 0.0 < test["p_value"] <= 1.0


def test_evaluate_generation_reports_scfid_next_to_real_vs_real(trained, pbmc_file, tmp_path):
    out = tmp_path / "gen.json"
    assert run(["evaluate", "--model", str(trained), "--data", str(pbmc_file), "--task",
                "generate", "--n", "3", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]["held_out"]["generate"]
    for part in ("generated_vs_real", "real_vs_real"):
        summary = metrics[part]["summary"]
        assert set(summary) == {"scfid", "mmd", "wasserstein"}
        assert all(math.isfinite(v) and v >= 0 for v in summary.values())
    assert metrics["n_per_type"] == 3 and metrics["cell_types"]


def test_evaluate_needs_a_split_or_all_cells(tiny_gpt_neox_dir, pbmc_file, tmp_path):
    with pytest.raises(C2SError, match="names no held-out cells of pbmc_small.h5ad"):
        run(["evaluate", "--model", str(tiny_gpt_neox_dir), "--data", str(pbmc_file),
             "--task", "annotate", "--cells", "held-out", "--label-key", "bulk_labels",
             "--out", str(tmp_path / "e.json")])
    with pytest.raises(C2SError, match="--temperature 0 is not above 0"):
        run(["evaluate", "--model", str(tiny_gpt_neox_dir), "--data", str(pbmc_file),
             "--task", "perturb", "--temperature", "0", "--out", str(tmp_path / "e.json")])
    with pytest.raises(C2SError, match="needs --label-key"):
        run(["evaluate", "--model", str(tiny_gpt_neox_dir), "--data", str(pbmc_file),
             "--task", "annotate", "--out", str(tmp_path / "e.json")])


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(MissingFileError, match="config file .*nope.yaml does not exist"):
        run(["train", "sft", "--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {inputs: [x.h5ad]}\ntrain: {model: demo, lr: 1}\n")
    with pytest.raises(C2SError, match=r"keys \['lr'\] that c2s train sft does not know"):
        run(["train", "sft", "--config", str(bad)])
    bad.write_text("data: {inputs: [missing.h5ad]}\n")
    with pytest.raises(MissingFileError, match="input file\\(s\\) not found: missing.h5ad"):
        run(["train", "grpo", "--config", str(bad)])
    bad.write_text("train: {}\n")
    with pytest.raises(C2SError, match="has no data: section"):
        run(["train", "pretrain", "--config", str(bad)])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_committed_example_configs_are_valid(path):
    from c2s_engine.training.dataset import DatasetConfig
    from c2s_engine.training.grpo import GRPORunConfig, gene_program

    config = train_commands.read_config(path)
    kind = path.name.split("_")[0]  # pretrain_*, sft_*, grpo_*
    train = train_commands.run_config(kind, config["train"], config["seed"])
    DatasetConfig.from_dict({"seed": config["seed"], **config["data"]})
    if isinstance(train, GRPORunConfig):
        train.resolved()
        if train.gene_program_gmt and Path(train.gene_program_gmt).exists():
            assert len(gene_program(train)) > 10


def test_evaluate_perturbation_with_the_mean_shift_baseline(tmp_path, build_checkpoint, pbmc68k):
    import numpy as np

    from c2s_engine.validation import prepare

    card = {"name": "tiny-perturb", "architecture": "GPTNeoXForCausalLM", "n_parameters": 0,
            "tasks": ["perturbation_response"], "top_k": 6, "organisms": ["Homo sapiens"],
            "context_length": 256, "prompt_family": "c2s"}
    model = load_model(str(build_checkpoint(tmp_path / "m", "gpt_neox", card=card)))
    adata = pbmc68k[:160].copy()
    adata.obs["condition"] = np.where(np.arange(adata.n_obs) % 2, "stim", "ctrl")
    prepare(adata)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    held_type = labels[0]
    scored = (labels == held_type) & (adata.obs["condition"] == "stim").to_numpy()
    metrics = train_commands.evaluate_perturbation(
        adata, scored, model, label_key="bulk_labels", condition_key="condition",
        control_value="ctrl", names={"stim": "IFN-beta"}, perturbation=None, seed=0,
        batch_size=16)
    assert metrics["decoding"] == "sampled, temperature 1"  # populations are compared
    entry = metrics["conditions"]["stim"]
    assert entry["perturbation"] == "IFN-beta" and entry["cell_types"] == [held_type]
    assert entry["n_real"] == int(scored.sum())
    assert entry["n_controls"] == int(((labels == held_type)
                                       & (adata.obs["condition"] == "ctrl").to_numpy()).sum())
    for method in ("model", "baseline_mean_shift"):
        summary = entry[method]["summary"]
        assert all(math.isfinite(summary[m]) and summary[m] >= 0 for m in ("mmd", "scfid"))
    # The baseline's change from control is the shift learned on the other cell types, which
    # varies between genes, so its Pearson r with the real change is defined.
    assert -1.0 <= entry["baseline_mean_shift"]["pearson_delta"] <= 1.0
    greedy = train_commands.evaluate_perturbation(
        adata, scored, model, label_key="bulk_labels", condition_key="condition",
        control_value="ctrl", names={"stim": "IFN-beta"}, perturbation=None, seed=0,
        batch_size=16, do_sample=False)
    assert greedy["decoding"] == "greedy"
    # The baseline does not depend on how the model decodes.
    assert (greedy["conditions"]["stim"]["baseline_mean_shift"]["summary"]
            == entry["baseline_mean_shift"]["summary"])
    contrasted = train_commands.evaluate_perturbation(
        adata, scored, model, label_key="bulk_labels", condition_key="condition",
        control_value="ctrl", names={"stim": "IFN-beta"}, perturbation=None, seed=0,
        batch_size=16, contrast_weight=0.75)
    assert contrasted["decoding"] == ("sampled, temperature 1, contrast weight 0.75 against "
                                      "other bulk_labels controls")
    assert (contrasted["conditions"]["stim"]["baseline_mean_shift"]["summary"]
            == entry["baseline_mean_shift"]["summary"])
