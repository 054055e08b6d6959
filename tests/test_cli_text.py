"""``c2s caption``, ``c2s summarize`` and ``c2s ask`` on a tiny model (outputs, files, errors)."""

from __future__ import annotations

import argparse
import json

import anndata as ad
import pandas as pd
import pytest

from c2s_engine.commands.text import register
from c2s_engine.errors import C2SError, ObsColumnError

pytest_plugins = ["tiny_checkpoints"]

TEXT_CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16,
             "tasks": ["cluster_captioning", "natural_language_interpretation",
                       "question_answering"]}


@pytest.fixture(scope="module")
def model_dir(build_checkpoint, tmp_path_factory):
    return str(build_checkpoint(tmp_path_factory.mktemp("text") / "gpt_neox", "gpt_neox",
                                card=TEXT_CARD))


@pytest.fixture(scope="module")
def data_file(pbmc68k, tmp_path_factory):
    adata = pbmc68k[:30].copy()
    adata.obs["group"] = pd.Categorical(
        adata.obs["louvain"].astype(str).map({"0": "T", "1": "Mono"}).fillna("Other"))
    path = tmp_path_factory.mktemp("data") / "pbmc30.h5ad"
    adata.write_h5ad(path)
    return str(path)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_caption_writes_the_csv(data_file, model_dir, tmp_path, capsys):
    out = tmp_path / "captions.csv"
    code = run(["caption", data_file, "--groupby", "group", "--model", model_dir, "--out",
                str(out), "--n-cells", "3", "--max-new-tokens", "6", "--quiet"])
    assert code == 0 and capsys.readouterr().out == ""
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["cluster", "n_cells", "caption", "top_genes", "cells_used"]
    obs = ad.read_h5ad(data_file).obs
    counts = obs["group"].value_counts()
    assert sorted(table["cluster"]) == ["Mono", "Other", "T"]
    for row in table.itertuples():
        assert row.n_cells == counts[row.cluster]
        cells = row.cells_used.split(";")
        assert 1 <= len(cells) <= 3 and set(obs.loc[cells, "group"]) == {row.cluster}
        assert len(row.top_genes.split(";")) >= 1


def test_summarize_prints_and_writes_json(data_file, model_dir, tmp_path, capsys):
    out = tmp_path / "summary.json"
    code = run(["summarize", data_file, "--model", model_dir, "--n-cells", "3",
                "--max-new-tokens", "6", "--groupby", "group", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert code == 0 and printed == record["text"] + "\n"
    assert record["n_cells_used"] == 3 and len(record["cells_used"]) == 3
    assert record["n_tokens"] <= record["budget"] == 250
    assert record["provenance"]["task"] == "natural_language_interpretation"
    txt = tmp_path / "summary.txt"
    run(["summarize", data_file, "--model", model_dir, "--n-cells", "3", "--max-new-tokens", "6",
         "--groupby", "group", "--out", str(txt), "--quiet"])
    assert txt.read_text() == record["text"] + "\n"  # same seed, same summary


def test_ask_prints_the_answer_and_the_context(data_file, model_dir, tmp_path, capsys):
    out = tmp_path / "answer.json"
    code = run(["ask", data_file, "--question", "What is Mono?", "--scope", "Mono",
                "--groupby", "group", "--model", model_dir, "--n-cells", "2",
                "--max-new-tokens", "6", "--show-context", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert code == 0 and printed.startswith(record["answer"] + "\n")
    assert f"--- context: 2 cells ({', '.join(record['cells_used'])})" in printed
    assert record["prompt"] in printed and "Question: What is Mono?\nAnswer:" in printed
    assert "The question is about cluster Mono of group" in record["facts_text"]
    cells = record["cells_used"][:1]
    run(["ask", data_file, "--question", "And this one?", "--cells", *cells, "--model",
         model_dir, "--max-new-tokens", "6", "--quiet"])
    assert "--- context" not in capsys.readouterr().out


def test_errors_come_before_the_model_is_loaded(data_file, tmp_path):
    missing_model = str(tmp_path / "no-model")
    with pytest.raises(ObsColumnError, match="'cluster' is not in adata.obs"):
        run(["caption", data_file, "--groupby", "cluster", "--model", missing_model, "--out",
             str(tmp_path / "c.csv")])
    with pytest.raises(C2SError, match="--out .*c.txt must end with .csv"):
        run(["caption", data_file, "--groupby", "group", "--model", missing_model, "--out",
             str(tmp_path / "c.txt")])
    with pytest.raises(C2SError, match="n_cells must be at least 1, got 0"):
        run(["summarize", data_file, "--n-cells", "0", "--model", missing_model])
    with pytest.raises(SystemExit):  # argparse: --question is required
        run(["ask", data_file, "--model", missing_model])
