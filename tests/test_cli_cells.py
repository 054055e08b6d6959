"""The `c2s annotate`, `c2s embed` and `c2s generate` commands on a tiny model."""

from __future__ import annotations

import argparse

import anndata
import numpy as np
import pytest

from c2s_engine.commands.cells import read_labels_file, register
from c2s_engine.errors import C2SError, LabelsError, TaskOptionError

pytest_plugins = ["tiny_checkpoints"]

N_CELLS = 12


@pytest.fixture(scope="module")
def model_dir(build_checkpoint, tmp_path_factory):
    card = {"tasks": ["cell_type_prediction", "embedding", "cell_type_generation"], "top_k": 12}
    return build_checkpoint(tmp_path_factory.mktemp("cli_model") / "m", "gpt_neox", card=card)


@pytest.fixture(scope="module")
def input_h5ad(pbmc68k, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_in") / "pbmc.h5ad"
    pbmc68k[:N_CELLS].copy().write_h5ad(path)
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="c2s")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_annotate_with_labels_from_writes_prediction_confidence_and_metrics(
        input_h5ad, model_dir, tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    assert run(["annotate", str(input_h5ad), "--labels-from", "bulk_labels", "--groupby",
                "louvain", "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    labels = set(result.obs["bulk_labels"].astype(str))
    assert set(result.obs["c2s_cell_type"].astype(str)) <= labels
    confidence = result.obs["c2s_confidence"].to_numpy()
    assert confidence.shape == (N_CELLS,) and ((confidence > 0) & (confidence <= 1)).all()
    stored = result.uns["c2s"]["annotate"]
    assert stored["model"] == model_dir.name and stored["params"]["mode"] == "score"
    assert stored["top_k"] == 12 and "clusters" in stored
    metrics = stored["metrics"]
    printed = capsys.readouterr().out
    assert f"annotated {N_CELLS} cells (scored among {len(stored['candidates'])} labels)" in printed
    assert (f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} against "
            f"obs['bulk_labels'] ({N_CELLS} labelled cells)") in printed
    assert "majority label per louvain:" in printed


def test_annotate_with_a_labels_file(input_h5ad, model_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# candidates\nT cell\n\n  B   cell \nmonocyte\n", encoding="utf-8")
    out = tmp_path / "annotated.h5ad"
    assert run(["annotate", str(input_h5ad), "--labels", str(labels), "--model", str(model_dir),
                "--tie-orders", "2", "--out", str(out), "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert list(result.uns["c2s"]["annotate"]["candidates"]) == ["T cell", "B cell", "monocyte"]
    assert result.uns["c2s"]["annotate"]["params"]["tie_orders"] == 2
    assert set(result.obs["c2s_cell_type"].astype(str)) <= {"T cell", "B cell", "monocyte"}
    assert "metrics" not in result.uns["c2s"]["annotate"]  # no truth column given


def test_labels_file_formats(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("id,label\n1,NK\n2,T cell\n3,\n", encoding="utf-8")
    assert read_labels_file(table) == ["NK", "T cell"]
    first_column = tmp_path / "labels.tsv"
    first_column.write_text("cell_type\tn\nB\t3\nNK\t1\n", encoding="utf-8")
    assert read_labels_file(first_column) == ["B", "NK"]
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="holds no label"):
        read_labels_file(empty)


def test_annotate_options_are_checked_before_any_work(input_h5ad, model_dir, tmp_path):
    with pytest.raises(SystemExit):  # argparse: the two label sources exclude each other
        run(["annotate", str(input_h5ad), "--labels", "x.txt", "--labels-from", "bulk_labels",
             "--out", str(tmp_path / "o.h5ad")])
    with pytest.raises(C2SError, match="must end with .h5ad"):
        run(["annotate", str(input_h5ad), "--model", str(model_dir), "--out",
             str(tmp_path / "o.csv")])


def test_embed_writes_obsm(input_h5ad, model_dir, tmp_path, capsys):
    out = tmp_path / "embedded.h5ad"
    assert run(["embed", str(input_h5ad), "--model", str(model_dir), "--hidden-layer", "0",
                "--text", "sentence", "--out", str(out), "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert result.obsm["X_c2s"].shape == (N_CELLS, 128)
    assert result.obsm["X_c2s"].dtype == np.float32
    params = result.uns["c2s"]["embed"]["params"]
    assert params["layer"] == 0 and params["text"] == "sentence"
    assert f"embedded {N_CELLS} cells into obsm['X_c2s'] (128 dimensions)" in capsys.readouterr().out


def test_generate_writes_generated_cells_over_reference_genes(input_h5ad, model_dir, tmp_path,
                                                              capsys):
    out = tmp_path / "generated.h5ad"
    assert run(["generate", "--cell-type", "B cell", "--cell-type", "T cell", "--n", "2",
                "--reference", str(input_h5ad), "--model", str(model_dir),
                "--max-new-tokens", "6", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    reference = anndata.read_h5ad(input_h5ad)
    assert result.n_obs == 4 and list(result.var_names) == list(reference.var_names)
    assert result.obs["c2s_generated"].all()
    assert list(result.obs["c2s_condition"]) == ["B cell", "B cell", "T cell", "T cell"]
    prov = result.uns["c2s"]["generate"]
    assert prov["seed"] == 5 and prov["params"]["max_new_tokens"] == 6
    assert capsys.readouterr().out.startswith(f"generated 4 cells over {reference.n_vars} ")


def test_generate_without_reference_says_why_it_is_needed(model_dir, tmp_path):
    with pytest.raises(TaskOptionError, match="needs --reference.*genes and reverse fit"):
        run(["generate", "--cell-type", "B cell", "--model", str(model_dir), "--out",
             str(tmp_path / "g.h5ad")])
